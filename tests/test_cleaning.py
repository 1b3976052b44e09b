"""The cleaner is byte-for-byte the reference cleaner (the five `regex` passes it replaced),
on arbitrary Unicode: lone surrogates, BOMs, U+2028, NBSP, ideographic space, CRLF, blank runs."""

from __future__ import annotations

import unicodedata

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from aistack.etl.cleaning import clean_text

_LINE_ENDINGS = regex.compile(r"\r\n?|[\u2028\u2029\x85]")
_CONTROLS = regex.compile(r"[[\p{Cc}\p{Cs}\ufeff]--[\t\n]]", flags=regex.V1)
_SPACES = regex.compile(r"[[\p{Zs}\x0b\x0c]--[ ]]", flags=regex.V1)
_TRAILING = regex.compile(r"[ \t]+$", flags=regex.MULTILINE)
_BLANK_RUNS = regex.compile(r"\n{3,}")


def reference_clean_text(text: str) -> str:
    """The cleaner as it was: Unicode property classes, every pass over every document."""
    text = _CONTROLS.sub("", _LINE_ENDINGS.sub("\n", text))
    text = unicodedata.normalize("NFC", text)
    text = _SPACES.sub(" ", text)
    text = _TRAILING.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


_special = st.sampled_from(
    [
        "\r\n", "\r", "\n", "\n\n\n", "\n \n\t\n", " ", "\t", "  \t ", "\x00", "\x07", "\x0b", "\x0c",
        "\x1c", "\x1f", "\x7f", "\x85", "\x9f", "\ufeff", "\u2028", "\u2029", "\xa0", "\u1680", "\u2000",
        "\u200a", "\u200b", "\u202f", "\u205f", "\u3000", "\ud800", "\udfff", "\udc00x", "e\u0301",
        "\u212b", "\u2126", "\uac00\u11a8", "\u0958", "a", "Z", "9", ".", "日本", "🙂", "\U0001d400",
    ]
)  # fmt: skip
_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.one_of(
    st.text(max_size=300),
    st.lists(_special, max_size=80).map("".join),
    st.lists(st.one_of(_special, st.text(max_size=5), _surrogates), max_size=60).map("".join),
    st.text(st.characters(max_codepoint=0x7F), max_size=300),  # the ASCII fast path
)


@settings(max_examples=2000, deadline=None)
@given(text=texts)
def test_cleaner_matches_the_reference_byte_for_byte(text: str) -> None:
    expected = reference_clean_text(text)
    got = clean_text(text)
    assert got.encode("utf-8", "surrogatepass") == expected.encode("utf-8", "surrogatepass")


def test_examples() -> None:
    raw = "\ufeffCafe\u0301\r\nline\x00two\u00a0x  \r\n\n\n\n\tindented\x7f  \n"
    assert clean_text(raw) == reference_clean_text(raw) == "Café\nlinetwo x\n\n\tindented"
    assert clean_text("a\u2028b\x85c\u2029\u3000d\ud800") == "a\nb\nc\n d"
    assert clean_text("plain ascii \t\n\n\n\nnext") == "plain ascii\n\nnext"
    assert clean_text("  \r\n \u3000 ") == ""
