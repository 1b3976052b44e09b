"""Loaders and cleaning: every record becomes a document or a rejection with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from aistack.etl.cleaning import clean_text
from aistack.etl.loaders import LoadedDocument, LoaderOptions, Rejection, html_to_text, list_sources, load


def _load_all(path: Path, **opts: object) -> list[LoadedDocument | Rejection]:
    options = LoaderOptions(**opts)  # type: ignore[arg-type]
    return [r for s in list_sources(str(path)) for r in load(s, options)]


def test_html_drops_boilerplate_keeps_paragraphs_and_pre() -> None:
    html = """<html><head><title>T</title><style>p{}</style></head><body>
    <nav>Home | About</nav><div role="navigation">prev next</div>
    <h1>Title<a class="headerlink" href="#">¶</a></h1>
    <p>First   paragraph with <a href="#">a link</a>
       spanning lines.</p><script>var x = 1;</script>
    <pre>def f():
    return 1</pre><footer>(c) someone</footer></body></html>"""
    text, title = html_to_text(html)
    assert title == "T"
    assert text == "Title\n\nFirst paragraph with a link spanning lines.\n\ndef f():\n    return 1"


def test_cleaning_normalises_unicode_whitespace_and_controls() -> None:
    raw = "\ufeffCafe\u0301\r\nline\x00two\u00a0x  \r\n\n\n\n\tindented\x7f  \n"
    assert clean_text(raw) == "Café\nlinetwo x\n\n\tindented"


def test_formats_and_rejections(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("plain text")
    (tmp_path / "b.md").write_text("# Title\n\nbody")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "big.txt").write_text("x" * 2000)
    lines = [json.dumps({"text": "one", "lang": "en"}), "{broken", json.dumps({"body": "no text"}), ""]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "d.csv").write_text('id,text\n1,"first, row"\n2,second\n')
    (tmp_path / "e.csv").write_text("id,body\n1,x\n")
    pq.write_table(pa.table({"text": ["p1", None]}), tmp_path / "f.parquet")
    records = _load_all(tmp_path, max_document_bytes=1000)
    docs = {Path(r.source.split("#")[0]).name + r.source[len(r.source.split("#")[0]) :]: r for r in records}
    reasons = {k: r.reason for k, r in docs.items() if isinstance(r, Rejection)}
    assert reasons == {
        "bin.txt": "binary",
        "latin1.txt": "not_utf8",
        "image.png": "unsupported_format",
        "big.txt": "too_large",
        "c.jsonl#byte=30": "invalid_json",
        "c.jsonl#byte=38": "missing_field",
        "e.csv": "missing_column",
        "f.parquet#row=2": "missing_field",
    }
    texts = {k: r.text for k, r in docs.items() if isinstance(r, LoadedDocument)}
    assert texts == {
        "a.txt": "plain text",
        "b.md": "# Title\n\nbody",
        "c.jsonl#byte=0": "one",
        "d.csv#row=1": "first, row",
        "d.csv#row=2": "second",
        "f.parquet#row=1": "p1",
    }
    assert docs["c.jsonl#byte=0"].metadata == {"format": "jsonl", "lang": "en"}  # type: ignore[union-attr]
    assert "not UTF-8 at byte 3" in docs["latin1.txt"].message  # type: ignore[union-attr]
    assert "columns are ['id', 'body']" in docs["e.csv"].message  # type: ignore[union-attr]


def test_globs_select_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.md").write_text("x")
    (tmp_path / "y.txt").write_text("y")
    (tmp_path / "sub" / "z.txt").write_text("z")
    (tmp_path / "a.md").write_text("a")
    assert [s.obj.key for s in list_sources(f"{tmp_path}/**/*.md")] == ["a.md", "sub/x.md"]
    assert [s.obj.key for s in list_sources(f"file://{tmp_path}/*.txt")] == ["y.txt"], (
        "* stays in one directory"
    )
    assert [s.obj.key for s in list_sources(f"{tmp_path}/sub/*")] == ["x.md", "z.txt"]  # keys under the root


def test_html_text_that_spells_a_placeholder_stays_literal() -> None:
    """<pre> blocks are put back by a per-call nonce, not by text the page could contain."""
    html = "<html><body><p>\x1a0\x1a and {{ x }}</p><pre>keep\n  this</pre><p>after</p></body></html>"
    text, _ = html_to_text(html)
    assert text == "\x1a0\x1a and {{ x }}\n\nkeep\n  this\n\nafter"
