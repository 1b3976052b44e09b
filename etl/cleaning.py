"""Text cleaning: Unicode NFC, line endings, control characters, whitespace."""

from __future__ import annotations

import unicodedata

import regex

_LINE_ENDINGS = regex.compile(r"\r\n?|[\u2028\u2029\x85]")
# C0/C1 controls except tab and newline, lone surrogates, byte-order marks
_CONTROLS = regex.compile(r"[[\p{Cc}\p{Cs}\ufeff]--[\t\n]]", flags=regex.V1)
_SPACES = regex.compile(r"[[\p{Zs}\x0b\x0c]--[ ]]", flags=regex.V1)
_TRAILING = regex.compile(r"[ \t]+$", flags=regex.MULTILINE)
_BLANK_RUNS = regex.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """Normalise a document's text; the chunker's spans refer to this cleaned text."""
    text = _CONTROLS.sub("", _LINE_ENDINGS.sub("\n", text))
    text = unicodedata.normalize("NFC", text)
    text = _SPACES.sub(" ", text)
    text = _TRAILING.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()
