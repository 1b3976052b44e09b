"""Text cleaning: Unicode NFC, line endings, control characters, whitespace.

The rules, in order: CRLF, CR, NEL, U+2028 and U+2029 become LF; C0/C1 controls (except tab
and LF), lone surrogates and byte-order marks are removed; NFC; the other space separators
(Unicode Zs: NBSP, ideographic space, ...) become a space; trailing spaces and tabs go; runs
of blank lines become one; the ends are stripped.

Each pass looks before it works (`in`, `str.isascii`, `unicodedata.is_normalized` and the
stdlib `re` all run in C), so clean text costs a few scans, and ASCII text skips every
Unicode rule. The character sets are spelled out: Cc, Cs and Zs are fixed by the standard.
"""

from __future__ import annotations

import re
import unicodedata

# Unicode Cc (C0, DEL, C1) except tab and LF, Cs (surrogates) and the BOM; LF/CR are handled first
_CONTROL_CHARS = "\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufeff"
_LINE_END_CHARS = "\x85\u2028\u2029"
_SPACE_CHARS = "\xa0\u1680\u2000-\u200a\u202f\u205f\u3000"  # Unicode Zs except the space itself
_CONTROLS = re.compile(f"[{_CONTROL_CHARS}]+")
_ASCII_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f]+")
_UNICODE_LINE_ENDS = re.compile(f"[{_LINE_END_CHARS}]")
_SPACES = re.compile(f"[{_SPACE_CHARS}]")
# any character one of the three Unicode passes would touch: one scan decides whether they run
_UNICODE_SPECIAL = re.compile(f"[{_CONTROL_CHARS}{_LINE_END_CHARS}{_SPACE_CHARS}]")
_TRAILING = re.compile(r"[ \t]+$", flags=re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """Normalise a document's text; the chunker's spans refer to this cleaned text."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.isascii():
        if _ASCII_CONTROLS.search(text):
            text = _ASCII_CONTROLS.sub("", text)
    else:
        special = _UNICODE_SPECIAL.search(text) is not None
        if special:
            text = _CONTROLS.sub("", _UNICODE_LINE_ENDS.sub("\n", text))
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
            special = True  # NFC maps U+2000/U+2001 to other spaces: look again
        if special and _SPACES.search(text):
            text = _SPACES.sub(" ", text)
    if " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
        text = _TRAILING.sub("", text)
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()
