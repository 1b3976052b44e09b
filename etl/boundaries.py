"""Safe boundaries of a tokenized document, where chunks may be cut with exact token counts.

Chunks are cut at *safe boundaries*: positions where the encoding's pre-tokenizer
(cl100k_base: ``'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+|
 ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s``) starts a new piece
*and* would split the left part the same way on its own. There BPE never merges across the
cut, so the tokens of ``text[a:b]`` are exactly the document's tokens between a and b, and a
chunk's count is a subtraction, not a second encode. Two kinds of position qualify:

* word/sentence: ``text[p-1]`` is not whitespace, ``text[p]`` is, and not (``text[p-1]`` is
  punctuation and ``text[p]`` a newline: the punctuation piece swallows newlines);
* line/paragraph: ``text[p-1]`` is a newline that ends its whitespace run's newlines, and a
  non-whitespace character follows the run.

The per-code-point classes and per-token byte lengths are lookup tables filled on first sight
of each code point or token: an ASCII run never builds the Unicode table, a small input never
decodes the whole vocabulary, and start-up stays small.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import tiktoken

if TYPE_CHECKING:
    from aistack.etl.token_boundaries import TokenFacts

PARAGRAPH, LINE, SENTENCE, WORD = 3, 2, 1, 0
EDGE = 4  # the document's start and end
_SENTENCE_ENDS = frozenset(".!?…。！？")
_CLOSERS = frozenset("\"')]”’»")

_WS, _LN, _NL, _ENDER, _CLOSER = 1, 2, 4, 8, 16


_UNKNOWN = 128  # not classified yet


class _CharClasses:
    """Per-code-point class bits: Unicode White_Space (as the Rust regex `\\s`), letter or
    number, newline, sentence end, closing quote or bracket; filled as code points appear."""

    def __init__(self) -> None:
        self.table = np.full(0x110000, _UNKNOWN, dtype=np.uint8)
        ascii_ws = [9, 10, 11, 12, 13, 32]  # Unicode White_Space within ASCII
        ascii_ln = [c for c in range(128) if chr(c).isalnum()]
        self.table[:128] = 0
        self.table[ascii_ws] |= _WS
        self.table[ascii_ln] |= _LN
        self._mark(range(128))
        self._lock = threading.Lock()

    def _mark(self, codes: range | list[int]) -> None:
        for bit, chars in ((_NL, "\r\n"), (_ENDER, _SENTENCE_ENDS), (_CLOSER, _CLOSERS)):
            picked = [ord(c) for c in chars if ord(c) in codes]
            self.table[picked] |= bit

    def of(self, cps: np.ndarray) -> np.ndarray:
        classes = self.table[cps]
        if cps.dtype != np.uint8 and (classes & _UNKNOWN).any():
            self._learn(np.unique(cps[(classes & _UNKNOWN) != 0]).tolist())
            classes = self.table[cps]
        return classes

    def _learn(self, codes: list[int]) -> None:
        import regex  # Unicode properties of the version tiktoken's Rust regex follows closely

        with self._lock:
            chars = "".join(map(chr, codes))
            bits = np.zeros(len(codes), dtype=np.uint8)
            for bit, pattern in ((_WS, r"[\p{White_Space}]"), (_LN, r"[\p{L}\p{N}]")):
                for m in regex.finditer(pattern, chars):
                    bits[m.start()] |= bit
            self.table[codes] = bits
            self._mark(codes)


@functools.cache
def char_classes() -> _CharClasses:
    return _CharClasses()


class TokenBytes:
    """Byte length of each token of an encoding, decoded the first time the token appears."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding
        self.table = np.full(encoding.n_vocab, -1, dtype=np.int64)

    def lengths(self, tokens: np.ndarray) -> np.ndarray:
        lengths = self.table[tokens]
        if len(lengths) and lengths.min() < 0:
            for token in np.unique(tokens[lengths < 0]).tolist():
                self.table[token] = len(self.encoding.decode_single_token_bytes(token))
            lengths = self.table[tokens]
        return lengths


class TokenizedDocument:
    """One document's tokens and safe boundaries: positions, levels and tokens before each.

    With `facts`, boundaries are computed per token when every token holds whole characters
    (token_boundaries.py); otherwise, and without `facts`, per character.
    """

    def __init__(
        self,
        text: str,
        tokens: np.ndarray,
        token_bytes: TokenBytes,
        facts: TokenFacts | None = None,
        found: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.text = text
        self.total_tokens = len(tokens)
        self._char_ends: np.ndarray | None = None
        if found is None and facts is not None:
            from aistack.etl.token_boundaries import token_level

            found = token_level(tokens, facts)
        if found is not None:
            self.positions, self.levels, self.cum, self._char_ends = found
            return
        self._by_characters(text, tokens, token_bytes)

    @classmethod
    def many(
        cls, texts: list[str], tokens: list[np.ndarray], token_bytes: TokenBytes, facts: TokenFacts
    ) -> list[TokenizedDocument]:
        """Several documents, their token-level boundaries found in one pass."""
        from aistack.etl.token_boundaries import token_level_many

        found = token_level_many(tokens, facts)
        return [cls(t, k, token_bytes, None, f) for t, k, f in zip(texts, tokens, found, strict=True)]

    def _by_characters(self, text: str, tokens: np.ndarray, token_bytes: TokenBytes) -> None:
        n = len(text)
        if text.isascii():
            cps = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
            self.char_bytes: np.ndarray | None = None  # char offset == byte offset
        else:
            cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            widths = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)
            self.char_bytes = np.concatenate(([0], np.cumsum(widths)))
        self.token_ends = np.cumsum(token_bytes.lengths(tokens)) if len(tokens) else np.zeros(0, np.int64)
        self.positions, self.levels = self._boundaries(cps, n)
        # tokens ending at or before each byte offset: one pass instead of a binary search per boundary
        ends_at = np.zeros(int(self.token_ends[-1]) + 1 if len(tokens) else 1, dtype=np.int32)
        ends_at[self.token_ends] = 1
        self.cum = np.cumsum(ends_at, dtype=np.int32)[self.byte_of(self.positions)]

    def byte_of(self, pos: np.ndarray | int) -> np.ndarray | int:
        return pos if self.char_bytes is None else self.char_bytes[pos]

    def tokens_before(self, pos: np.ndarray) -> np.ndarray:
        """Document tokens ending at or before each character position."""
        if self._char_ends is not None:
            return np.searchsorted(self._char_ends, pos, side="right")
        return np.searchsorted(self.token_ends, self.byte_of(pos), side="right")

    def char_at_token(self, tokens: int, start_pos: int) -> int:
        """Character position at the end of the first `tokens` document tokens, rounded down."""
        if tokens <= 0:
            return start_pos
        if self._char_ends is not None:
            return int(self._char_ends[tokens - 1])
        byte = int(self.token_ends[tokens - 1])
        if self.char_bytes is None:
            return byte
        return int(np.searchsorted(self.char_bytes, byte, side="right")) - 1

    @staticmethod
    def _boundaries(cps: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        cls = char_classes().of(cps)
        ws, nl = (cls & _WS) != 0, (cls & _NL) != 0
        # whitespace runs: starts s (text[s-1] non-space, text[s] space) and ends q (the reverse)
        run_starts = np.flatnonzero(~ws[:-1] & ws[1:]) + 1
        run_ends = np.flatnonzero(ws[:-1] & ~ws[1:]) + 1
        # word/sentence boundaries: run starts, unless punctuation meets a newline
        before, after = cls[run_starts - 1], cls[run_starts]
        punct_newline = ((before & _LN) == 0) & ((after & _NL) != 0)
        word_pos = run_starts[~punct_newline]
        before = before[~punct_newline]
        closer = ((before & _CLOSER) != 0) & (word_pos >= 2)
        closer &= (cls[np.maximum(word_pos - 2, 0)] & _ENDER) != 0
        word_level = np.where(((before & _ENDER) != 0) | closer, SENTENCE, WORD)
        # line/paragraph boundaries: after the last newline of a whitespace run that
        # is followed by a non-space character (not by the end of the text)
        newline_at = np.flatnonzero(nl)
        cand = newline_at + 1
        cand = cand[cand < n]
        k = np.searchsorted(run_ends, cand)
        inside = k < len(run_ends)
        cand, run_end = cand[inside], run_ends[k[inside]]
        later = np.searchsorted(newline_at, cand)
        later_newline = newline_at[np.minimum(later, len(newline_at) - 1)]
        last_in_run = (later >= len(newline_at)) | (later_newline >= run_end)
        cand = cand[last_in_run]
        if ws[0]:
            run_starts = np.concatenate(([0], run_starts))
        run_start = run_starts[np.searchsorted(run_starts, cand - 1, side="right") - 1]
        line_feeds = np.flatnonzero(cps == 10)
        breaks = np.searchsorted(line_feeds, cand) - np.searchsorted(line_feeds, run_start)
        line_level = np.where(breaks >= 2, PARAGRAPH, LINE)
        positions = np.concatenate(([0], word_pos, cand, [n]))
        levels = np.concatenate(([EDGE], word_level, line_level, [EDGE]))
        order = np.argsort(positions, kind="stable")
        positions, levels = positions[order], levels[order]
        keep = np.concatenate(([True], positions[1:] != positions[:-1]))  # n == 0 collapses
        return positions[keep], levels[keep]


@functools.cache
def _block_cuts() -> tuple[object, ...]:
    import regex

    return (
        regex.compile(r"\n[^\S\r\n]*[\r\n][\p{White_Space}]*(?=[^\p{White_Space}])"),  # paragraph
        regex.compile(r"[\r\n][\p{White_Space}]*(?=[^\p{White_Space}])"),  # line
        regex.compile(r"(?<=[\p{L}\p{N}])(?=[\p{White_Space}])"),  # word
    )


def blocks(text: str, size: int) -> Iterator[tuple[int, int]]:
    """Spans of about `size` characters that end at safe boundaries (see the module doc)."""
    start, n = 0, len(text)
    while n - start > size:
        cut = None
        for pattern in _block_cuts():
            m = pattern.search(text, start + size // 2, start + size)  # type: ignore[attr-defined]
            if m:
                run = m.group()
                # a line/paragraph cut goes after the run's last newline, a word cut before the space
                last_nl = max(run.rfind("\n"), run.rfind("\r"))
                cut = m.start() + last_nl + 1 if last_nl >= 0 else m.start()
                break
        if cut is None or cut <= start:
            break  # no boundary at all: the rest is one block
        yield start, cut
        start = cut
    if start < n:
        yield start, n
