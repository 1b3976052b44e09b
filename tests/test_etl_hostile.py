"""Hostile and broken input: every bad entry becomes a rejected row with its exact reason, the
run goes on, nothing hangs, nothing outside the input root is read, and killed writers leave
nothing behind for long.

EACCES and EIO come from the kernel itself, without mocks: as a normal user a chmod 000 file
gives EACCES; as root (who may read a chmod 000 file) a symlink to a write-only procfs
sysctl (`/proc/sys/vm/drop_caches`, mode 0200, refused to root too) gives EACCES, and a
symlink to `/proc/self/mem` gives EIO when read at offset 0 (an unmapped address).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from aistack.cli import app
from aistack.etl.errors import EtlError
from aistack.etl.job import EtlOptions, EtlSummary, run_etl
from aistack.etl.loaders import LoaderOptions, Rejection, list_sources, load
from aistack.etl.parquet_io import read_table

GOOD = "A good document. It has sentences.\n\nAnd a second paragraph."


def _run(src: Path | str, out: Path, **loader: object) -> EtlSummary:
    """run_etl in a thread with a deadline: a hang fails the test instead of stalling the suite."""
    result: list[object] = []
    options = EtlOptions(loader=LoaderOptions(**loader))  # type: ignore[arg-type]
    thread = threading.Thread(target=lambda: result.append(_catch(src, out, options)), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the ETL hung"
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[return-value]


def _catch(src: Path | str, out: Path, options: EtlOptions) -> object:
    try:
        return run_etl(str(src), out.as_uri(), options)
    except BaseException as exc:
        return exc


def _rejected(out: Path) -> dict[str, tuple[str, str]]:
    rows = read_table(out.as_uri(), "rejected").to_pylist()
    return {r["source"].rsplit("/", 1)[-1]: (r["reason"], r["message"]) for r in rows}


def _reasons(src: Path) -> dict[str, str]:
    """Rejections straight from the loaders: entry name (and #line/#row) -> reason."""
    found = {}
    for s in list_sources(str(src)):
        for r in load(s, LoaderOptions()):
            if isinstance(r, Rejection):
                found[r.source.rsplit("/", 1)[-1]] = r.reason
    return found


def _eacces_entry(src: Path, name: str) -> None:
    path = src / name
    if os.geteuid() != 0:
        path.write_text("secret")
        path.chmod(0)
    elif Path("/proc/sys/vm/drop_caches").exists():
        path.symlink_to("/proc/sys/vm/drop_caches")
    else:
        pytest.skip("root without procfs: no way to make EACCES without mocks")


def test_fifo_is_not_read_and_does_not_hang(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_text(GOOD)
    os.mkfifo(src / "pipe.txt")
    summary = _run(src, tmp_path / "out")
    assert summary.documents == 1 and dict(summary.rejected) == {"not_a_regular_file": 1}
    assert _rejected(tmp_path / "out") == {"pipe.txt": ("not_a_regular_file", "a FIFO, not a regular file")}


def test_a_fifo_given_as_the_source_itself_is_rejected(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jsonl")
    summary = _run(tmp_path / "pipe.jsonl", tmp_path / "out")
    assert summary.records_in == 1 and dict(summary.rejected) == {"not_a_regular_file": 1}


def test_dangling_symlink_and_symlink_loop(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.md").write_text(GOOD)
    (src / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")
    (src / "loop-a.txt").symlink_to(src / "loop-b.txt")
    (src / "loop-b.txt").symlink_to(src / "loop-a.txt")
    summary = _run(src, tmp_path / "out")
    assert summary.documents == 1
    rejected = _rejected(tmp_path / "out")
    assert rejected["dangling.txt"] == (
        "dangling_symlink",
        f"symlink to {str(tmp_path / 'nowhere.txt')!r}, which does not exist",
    )
    assert rejected["loop-a.txt"][0] == rejected["loop-b.txt"][0] == "symlink_loop"


def test_read_errors_eacces_and_eio(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_text(GOOD)
    _eacces_entry(src, "denied.txt")
    if Path("/proc/self/mem").exists():
        (src / "eio.txt").symlink_to("/proc/self/mem")
    summary = _run(src, tmp_path / "out")
    assert summary.documents == 1
    rejected = _rejected(tmp_path / "out")
    assert rejected["denied.txt"] == ("unreadable", "cannot read: Permission denied")
    if Path("/proc/self/mem").exists():
        assert rejected["eio.txt"] == ("unreadable", "cannot read: Input/output error")


def test_two_symlinks_to_one_file_make_one_document(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-real.txt").write_text(GOOD)
    (src / "b-link.txt").symlink_to(src / "a-real.txt")
    (src / "c-link.txt").symlink_to("a-real.txt")
    os.link(src / "a-real.txt", src / "d-hardlink.txt")
    out = tmp_path / "out"
    summary = _run(src, out)
    assert summary.documents == 1 and dict(summary.rejected) == {"duplicate_of": 3}
    first = (src / "a-real.txt").resolve().as_uri()
    for name in ("b-link.txt", "c-link.txt", "d-hardlink.txt"):
        assert _rejected(out)[name] == ("duplicate_of", f"the same file as {first}")
    chunks = read_table(out.as_uri(), "chunks", ["chunk_id", "doc_id"]).to_pylist()
    assert len({c["chunk_id"] for c in chunks}) == len(chunks)
    assert read_table(out.as_uri(), "documents", ["source"])["source"].to_pylist() == [first]


def test_symlinked_directory_is_reported_not_followed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x.txt").write_text(GOOD)
    (src / "linked").symlink_to(src / "sub")
    assert _reasons(src) == {"linked": "not_a_regular_file"}


def test_confinement_rejects_symlinks_that_leave_the_root(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    root = tmp_path / "dataset"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "good.txt").write_text(GOOD)
    (root / "docs" / "escape.txt").symlink_to(secret)
    (root / "docs" / "inside.txt").symlink_to(root / "docs" / "good.txt")  # inside: fine (a duplicate)
    out = tmp_path / "out"
    summary = _run(root / "docs", out, confine_to=root)
    assert summary.documents == 1
    assert _rejected(out)["escape.txt"] == (
        "outside_input_root",
        f"resolves to a file outside the input root {root.resolve()}",
    )
    texts = read_table(out.as_uri(), "documents", ["text"])["text"].to_pylist()
    assert not any("SECRET" in t for t in texts)
    # unconfined (the CLI reading the user's own paths), the same link is followed
    assert _run(root / "docs", tmp_path / "out2").documents == 2


@pytest.mark.parametrize(
    "source",
    ["../secret.txt", "docs/../../secret.txt", "docs/../../*.txt", "**/../*.txt", "docs/*/../../../x"],
)
def test_confinement_refuses_dotdot_that_leaves_the_root(tmp_path: Path, source: str) -> None:
    root = tmp_path / "dataset"
    (root / "docs").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    with pytest.raises(EtlError, match=r"(outside the input root|'\.\.' segments).*refused"):
        run_etl(
            f"{root}/{source}", (tmp_path / "out").as_uri(), EtlOptions(loader=LoaderOptions(confine_to=root))
        )
    assert not (tmp_path / "out").exists(), "refused before anything is written"


def test_confinement_allows_dotdot_that_stays_inside(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "good.txt").write_text(GOOD)
    summary = _run(f"{root}/docs/../docs/*.txt", tmp_path / "out", confine_to=root)
    assert summary.documents == 1


def test_type_and_format_mistakes_are_named(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"text": pa.array([1, 2, 3], pa.int64())}), src / "ints.parquet")
    (src / "extra.csv").write_text('id,text\n1,"fine"\n2,"too many",oops\n')
    (src / "dupe.csv").write_text("id,text,id\n1,a,2\n")
    (src / "lines.jsonl").write_bytes(b'{"text": "ok"}\n\n   \n{"text": "caf\xe9"}\n{"text": 7}\n[1, 2]\n')
    (src / "utf16.txt").write_bytes("Grüße aus UTF-16.".encode("utf-16"))
    (src / "utf16.jsonl").write_bytes((json.dumps({"text": "ünïcode"}) + "\n").encode("utf-16"))
    out = tmp_path / "out"
    summary = _run(src, out)
    rejected = _rejected(out)
    assert rejected["ints.parquet"] == (
        "wrong_type",
        "column 'text' is int64, not a string column (3 rows not read)",
    )
    assert rejected["extra.csv#row=2"] == ("extra_fields", "line 3: 3 fields, the header has 2")
    assert rejected["dupe.csv"] == ("duplicate_column", "column 'id' appears 2 times in the header")
    assert rejected["lines.jsonl#byte=20"][0] == "not_utf8"
    assert rejected["lines.jsonl#byte=37"] == ("wrong_type", "field 'text' is a JSON int, not a string")
    assert rejected["lines.jsonl#byte=49"][0] == "missing_field"
    assert summary.skipped == {"blank_line": 2}
    texts = set(read_table(out.as_uri(), "documents", ["text"])["text"].to_pylist())
    assert texts == {"fine", "ok", "Grüße aus UTF-16.", "ünïcode"}
    assert summary.records_in == summary.documents + summary.rejected_total


def test_utf16_with_a_bad_body_is_called_utf16_not_binary(tmp_path: Path) -> None:
    (tmp_path / "bad16.txt").write_bytes(b"\xff\xfeA\x00\x00\xd8")  # BOM, 'A', then a lone high surrogate
    assert _reasons(tmp_path) == {"bad16.txt": "undecodable"}
    [s] = list_sources(str(tmp_path))
    [r] = load(s, LoaderOptions())
    assert isinstance(r, Rejection) and "UTF-16" in r.message


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-document-mb", "0", "--max-document-mb must be a number greater than 0, got 0.0"),
        ("--max-document-mb", "-1", "--max-document-mb must be a number greater than 0, got -1.0"),
        ("--max-document-mb", "nan", "--max-document-mb must be a number greater than 0, got nan"),
        ("--max-document-mb", "inf", "--max-document-mb must be a number greater than 0, got inf"),
        ("--workers", "0", "--workers must be at least 1, got 0"),
        ("--chunk-tokens", "4", "--chunk-tokens must be at least 8, got 4"),
        ("--overlap", "-1", "--overlap must be >= 0 and < --chunk-tokens (512), got -1"),
        ("--text-field", "", "--text-field must not be empty"),
    ],
)
def test_bad_flag_values_are_refused_in_one_line(tmp_path: Path, flag: str, value: str, message: str) -> None:
    (tmp_path / "a.txt").write_text(GOOD)
    result = CliRunner().invoke(
        app, ["etl", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"), flag, value]
    )
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {message}"
    assert not (tmp_path / "out").exists()


def test_killed_writer_temp_files_are_swept_and_published_files_are_0644(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a.txt").write_text(GOOD)
    # a real writer, killed with SIGKILL in the middle of writing a part
    code = (
        "import sys, time\n"
        "from aistack.etl.storage import open_storage\n"
        "with open_storage(sys.argv[1]).writer('chunks/part-00000-x.parquet') as fh:\n"
        "    fh.write(b'x' * 4096); fh.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, out.as_uri()], stdout=subprocess.PIPE, text=True)
    assert writer.stdout and writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    [orphan] = list((out / "chunks").glob(".part-*"))
    # the temporary file of a live writer on this host is left alone
    live = (
        out
        / "documents"
        / f".part-00000-y.parquet.{orphan.name.split('.')[-4]}.{os.getppid()}.0000abcd.aistack-tmp"
    )
    live.parent.mkdir(parents=True)
    live.write_bytes(b"in progress")
    # what mkstemp left before (`.part-...parquet.XXXXXXXX`): swept once it is an hour old
    legacy = out / "chunks" / ".part-00000-20240101T000000-0123abcd.parquet.k2j4_x9q"
    legacy.write_bytes(b"old")
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    unrelated = out / "chunks" / ".notes.txt"
    unrelated.write_text("not ours")
    old = os.umask(0o022)
    try:
        _run(src, out)
    finally:
        os.umask(old)
    assert not orphan.exists() and not legacy.exists()
    assert live.exists() and unrelated.exists()
    published = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert published and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in published)


def test_one_run_over_every_bad_entry_publishes_the_good_ones(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "good.txt").write_text(GOOD)
    (src / "nested" / "good.html").write_text("<html><body><p>Nested good page.</p></body></html>")
    (src / "rows.jsonl").write_text(
        json.dumps({"text": "row one"}) + "\n\n" + json.dumps({"text": "row two"}) + "\n"
    )
    os.mkfifo(src / "fifo.txt")
    (src / "dangling.md").symlink_to(tmp_path / "missing.md")
    (src / "loop.txt").symlink_to(src / "loop.txt")
    (src / "dup.txt").symlink_to(src / "good.txt")
    _eacces_entry(src, "denied.txt")
    (src / "binary.txt").write_bytes(b"\x00\x01\x02")
    (src / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (src / "empty.md").write_text(" \n\n ")
    (src / "image.png").write_bytes(b"\x89PNG")
    out = tmp_path / "out"
    summary = _run(src, out)
    assert summary.documents == 4
    assert {k: v[0] for k, v in _rejected(out).items()} == {
        "fifo.txt": "not_a_regular_file",
        "dangling.md": "dangling_symlink",
        "loop.txt": "symlink_loop",
        "dup.txt": "duplicate_of",
        "denied.txt": "unreadable",
        "binary.txt": "binary",
        "latin1.txt": "not_utf8",
        "empty.md": "empty",
        "image.png": "unsupported_format",
    }
    assert summary.records_in == summary.documents + summary.rejected_total == 13
    assert summary.skipped == {"blank_line": 1}
    assert read_table(out.as_uri(), "documents").num_rows == 4
    # the CLI: same run as a whole process, within a deadline, exit 0
    done = subprocess.run(
        [sys.executable, "-m", "aistack", "etl", str(src), "--out", str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "13 = 4 + 9" in done.stdout


def test_a_huge_jsonl_line_is_rejected_without_being_read_whole(tmp_path: Path) -> None:
    from aistack.etl.job import EtlOptions, run_etl
    from aistack.etl.loaders import LoaderOptions
    from aistack.etl.parquet_io import read_table

    path = tmp_path / "docs.jsonl"
    with path.open("wb") as fh:
        fh.write(b'{"text": "a fine record"}\n{"text": "')
        for _ in range(8):  # an 8 MB line with no newline until its end
            fh.write(b"x" * 2**20)
        fh.write(b'"}\n{"text": "another fine record"}\n')
    out = (tmp_path / "out").as_uri()
    summary = run_etl(str(path), out, EtlOptions(loader=LoaderOptions(max_document_bytes=2**20)))
    assert (summary.documents, summary.rejected_total) == (2, 1)
    (row,) = read_table(out, "rejected").to_pylist()
    assert row["reason"] == "too_large" and row["source"].endswith("#byte=26")
    assert "exceeds max_document_bytes=1048576" in row["message"]
