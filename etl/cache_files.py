"""Checksummed cache files under ~/.cache/aistack (or AISTACK_CACHE_DIR).

Things every process would otherwise rebuild at start (parsed tiktoken ranks, per-token
facts) are kept here. A file holds the SHA-256 of its payload and then the payload; it is
written to a temporary file and renamed, so a reader sees a whole file or none. A cache that
cannot be read or written is only slower, never wrong: a bad file reads as missing.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("AISTACK_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aistack"


def read_checked(path: Path) -> bytes | None:
    """The payload of a cache file, or None when it is missing or does not match its checksum."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    digest, payload = blob[:32], blob[32:]
    return payload if hashlib.sha256(payload).digest() == digest else None


def write_checked(path: Path, payload: bytes, replaces: str = "") -> None:
    """Write a cache file atomically; a directory that cannot be written is skipped. Files
    beside it matching the glob `replaces` (the same thing for older code or packages) go."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, path)
        except OSError:
            os.unlink(tmp)
            raise
        for old in path.parent.glob(replaces) if replaces else ():
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:  # a read-only home: no cache, the next start rebuilds
        pass
