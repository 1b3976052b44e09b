"""Checksummed cache files under ~/.cache/aistack (or AISTACK_CACHE_DIR).

Things every process would otherwise rebuild at start (parsed tiktoken ranks, per-token
facts) are kept here. A file holds the SHA-256 of its payload and then the payload; it is
written to a temporary file and renamed, so a reader sees a whole file or none. A cache that
cannot be read or written is only slower, never wrong: a bad file reads as missing.

The checksum catches torn and corrupted files, not crafted ones, so a file is trusted only
if nobody else could have written it (as ssh treats its keys): a regular file owned by this
user or by root and writable by no one else. Anything else (another user's file in a shared
directory, a FIFO, a device, a symlink) reads as missing, without blocking.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import time
from pathlib import Path

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a file name, never a path
MAX_BYTES = 64 << 20  # no cache file is near this; a bigger one is not read into memory
_ABANDONED_SECONDS = 600  # a temporary file this old belongs to a writer that was killed


def cache_root() -> Path | None:
    """AISTACK_CACHE_DIR, else $XDG_CACHE_HOME/aistack (when absolute, as the XDG spec asks),
    else ~/.cache/aistack; None when there is no home to put it in."""
    root = os.environ.get("AISTACK_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "aistack"
    try:
        return Path.home() / ".cache" / "aistack"
    except RuntimeError:  # no HOME and no passwd entry: no cache, only slower
        return None


def cache_path(name: str) -> Path | None:
    """The cache file `name` (a plain file name), or None when there is no cache to use."""
    root = cache_root()
    return root / name if root is not None and _NAME.fullmatch(name) else None


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid in (os.geteuid(), 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def read_checked(path: Path | None) -> bytes | None:
    """The payload of a cache file, or None when it is missing, not to be trusted (see the
    module doc) or does not match its checksum."""
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _trusted(st) or st.st_size > MAX_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            blob = fh.read(MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    digest, payload = blob[:32], blob[32:]
    return payload if hashlib.sha256(payload).digest() == digest else None


def write_checked(path: Path | None, payload: bytes, replaces: str = "") -> None:
    """Write a cache file atomically; a directory that cannot be written is skipped. Files
    beside it matching the glob `replaces` (the same thing for older code or packages) go,
    and so do temporary files of writers killed mid-write."""
    if path is None:
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, path)
        except BaseException:  # an interrupt, too: no temporary file is left behind
            os.unlink(tmp)
            raise
        stale = path.parent.glob(replaces) if replaces else iter(())
        abandoned = path.parent.glob(f"{replaces or path.name}*.tmp")
        for old in [*stale, *abandoned]:
            if old != path and (old.suffix != ".tmp" or _older_than(old, _ABANDONED_SECONDS)):
                old.unlink(missing_ok=True)
    except OSError:  # a read-only home: no cache, the next start rebuilds
        pass


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat(follow_symlinks=False).st_mtime > seconds
    except OSError:
        return False
