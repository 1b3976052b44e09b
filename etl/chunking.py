"""Token-aware chunking with exact token counts and exact character spans.

Each document is encoded once. Chunks are cut at *safe boundaries*: positions where the
encoding's pre-tokenizer (cl100k_base: ``'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|
\\p{N}{1,3}+| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s``) starts a new piece
*and* would split the left part the same way on its own. There BPE never merges across the
cut, so the tokens of ``text[a:b]`` are exactly the document's tokens between a and b, and a
chunk's count is a subtraction, not a second encode. Two kinds of position qualify:

* word/sentence: ``text[p-1]`` is not whitespace, ``text[p]`` is, and not (``text[p-1]`` is
  punctuation and ``text[p]`` a newline: the punctuation piece swallows newlines);
* line/paragraph: ``text[p-1]`` is a newline that ends its whitespace run's newlines, and a
  non-whitespace character follows the run.

Chunks prefer paragraph, then line, then sentence, then word boundaries; a span with no
boundary within the budget is cut between tokens (at a character boundary) and re-counted.
Encodings not proven additive get every chunk re-counted.
"""

from __future__ import annotations

import functools
import os
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import regex

from aistack.etl.encodings import DEFAULT_ENCODING, encoding_is_additive, load_encoding

PARAGRAPH, LINE, SENTENCE, WORD = 3, 2, 1, 0
_EDGE = 4  # the document's start and end
_SENTENCE_ENDS = frozenset(".!?…。！？")
_CLOSERS = frozenset("\"')]”’»")
MIN_MAX_TOKENS = 8
T = TypeVar("T")  # one code point can take up to 4 byte-level tokens


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    start: int  # character offsets into the document text: text[start:end] == chunk text
    end: int
    text: str
    token_count: int


@dataclass(frozen=True, slots=True)
class ChunkingOptions:
    max_tokens: int = 512
    overlap_tokens: int = 64
    encoding: str = DEFAULT_ENCODING

    def __post_init__(self) -> None:
        if self.max_tokens < MIN_MAX_TOKENS:
            raise ValueError(f"chunking.maxTokens must be at least {MIN_MAX_TOKENS}, got {self.max_tokens}")
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise ValueError(
                f"chunking.overlapTokens must be >= 0 and < maxTokens ({self.max_tokens}), "
                f"got {self.overlap_tokens}"
            )


_WS, _LN, _NL, _ENDER, _CLOSER = 1, 2, 4, 8, 16


@functools.cache
def _char_classes() -> np.ndarray:
    """Per-code-point class bits: Unicode White_Space (as the Rust regex `\\s`), letter or
    number, newline, sentence end, closing quote or bracket."""
    classes = np.zeros(0x110000, dtype=np.uint8)
    patterns = ((_WS, regex.compile(r"[\p{White_Space}]+")), (_LN, regex.compile(r"[\p{L}\p{N}]+")))
    for base in range(0, 0x110000, 0x10000):  # a plane at a time keeps the peak small
        codes = [c for c in range(base, base + 0x10000) if not 0xD800 <= c < 0xE000]
        plane = "".join(map(chr, codes))
        for bit, pattern in patterns:
            for m in pattern.finditer(plane):
                classes[codes[m.start()] : codes[m.end() - 1] + 1] |= bit
    for bit, chars in ((_NL, "\r\n"), (_ENDER, _SENTENCE_ENDS), (_CLOSER, _CLOSERS)):
        classes[[ord(c) for c in chars]] |= bit
    return classes


@functools.cache
def _token_byte_lengths(encoding: str) -> np.ndarray:
    enc = load_encoding(encoding)
    lengths = np.zeros(enc.n_vocab, dtype=np.int64)
    for token in range(enc.n_vocab):
        try:
            lengths[token] = len(enc.decode_single_token_bytes(token))
        except KeyError:  # holes in the vocabulary
            continue
    return lengths


class _Document:
    """One document's code points, byte offsets, tokens and safe boundaries."""

    def __init__(self, text: str, tokens: np.ndarray, byte_lengths: np.ndarray) -> None:
        self.text = text
        n = len(text)
        if text.isascii():
            cps = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
            self.char_bytes: np.ndarray | None = None  # char offset == byte offset
        else:
            cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            widths = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)
            self.char_bytes = np.concatenate(([0], np.cumsum(widths)))
        self.token_ends = np.cumsum(byte_lengths[tokens]) if len(tokens) else np.zeros(0, np.int64)
        self.total_tokens = len(tokens)
        self.positions, self.levels = self._boundaries(cps, n)
        # tokens ending at or before each byte offset: one pass instead of a binary search per boundary
        ends_at = np.zeros(int(self.token_ends[-1]) + 1 if len(tokens) else 1, dtype=np.int32)
        ends_at[self.token_ends] = 1
        self.cum = np.cumsum(ends_at, dtype=np.int32)[self.byte_of(self.positions)]

    def byte_of(self, pos: np.ndarray | int) -> np.ndarray | int:
        return pos if self.char_bytes is None else self.char_bytes[pos]

    def tokens_before(self, pos: np.ndarray) -> np.ndarray:
        """Document tokens ending at or before each character position."""
        return np.searchsorted(self.token_ends, self.byte_of(pos), side="right")

    @staticmethod
    def _boundaries(cps: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        cls = _char_classes()[cps]
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
        levels = np.concatenate(([_EDGE], word_level, line_level, [_EDGE]))
        order = np.argsort(positions, kind="stable")
        positions, levels = positions[order], levels[order]
        keep = np.concatenate(([True], positions[1:] != positions[:-1]))  # n == 0 collapses
        return positions[keep], levels[keep]


BLOCK_CHARS = 1 << 18
_BLOCK_CUTS = (
    regex.compile(r"\n[^\S\r\n]*[\r\n][\p{White_Space}]*(?=[^\p{White_Space}])"),  # paragraph
    regex.compile(r"[\r\n][\p{White_Space}]*(?=[^\p{White_Space}])"),  # line
    regex.compile(r"(?<=[\p{L}\p{N}])(?=[\p{White_Space}])"),  # word
)


def _blocks(text: str, size: int) -> Iterator[tuple[int, int]]:
    """Spans of about `size` characters that end at safe boundaries (see the module doc)."""
    start, n = 0, len(text)
    while n - start > size:
        cut = None
        for pattern in _BLOCK_CUTS:
            m = pattern.search(text, start + size // 2, start + size)
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


class Chunker:
    """Splits documents into chunks of at most `max_tokens` tokens with `overlap_tokens` overlap."""

    def __init__(self, options: ChunkingOptions | None = None, *, threads: int | None = None) -> None:
        self.options = options or ChunkingOptions()
        self.encoding = load_encoding(self.options.encoding)
        self.additive = encoding_is_additive(self.options.encoding)
        self._byte_lengths = _token_byte_lengths(self.options.encoding)
        self._pool = ThreadPoolExecutor(threads or os.cpu_count() or 2, thread_name_prefix="aistack-chunk")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Chunker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _encode(self, text: str) -> np.ndarray:
        return self.encoding.encode_to_numpy(text, disallowed_special=())

    def count(self, text: str) -> int:
        """Exact token count of `text` on its own."""
        return len(self._encode(text))

    def _chunk_block(self, text: str, start: int, end: int) -> list[Chunk]:
        block = text[start:end]
        return self._pack(_Document(block, self._encode(block), self._byte_lengths))

    @staticmethod
    def _join(blocks: Iterable[tuple[int, list[Chunk]]]) -> list[Chunk]:
        """Chunks of consecutive blocks as one document's chunks (offsets and indexes fixed)."""
        chunks: list[Chunk] = []
        for start, block_chunks in blocks:
            for c in block_chunks:
                chunks.append(Chunk(len(chunks), c.start + start, c.end + start, c.text, c.token_count))
        return chunks

    def chunk(self, text: str) -> list[Chunk]:
        """Chunk one document in the calling thread.

        Long documents are processed in blocks cut at paragraph (else line, else word)
        boundaries, so memory follows the block size, not the document size; no chunk spans
        two blocks.
        """
        return self._join((s, self._chunk_block(text, s, e)) for s, e in _blocks(text, BLOCK_CHARS))

    def chunk_many(self, texts: Sequence[str]) -> list[list[Chunk]]:
        """Chunk several documents on the thread pool (tiktoken and numpy drop the GIL)."""
        return [chunks for _, chunks in self.chunk_stream(texts, lambda t: t)]

    def chunk_stream(
        self, items: Iterable[T], text_of: Callable[[T], str], window_bytes: int = 4 << 20
    ) -> Iterator[tuple[T, list[Chunk]]]:
        """Chunk a stream in order, with up to `window_bytes` of blocks in flight on the pool.

        Blocks of one long document run in parallel, and the caller's work on a finished
        document (writing Parquet) overlaps the chunking of the next ones.
        """
        pending: deque[tuple[T, list[tuple[int, int, Future[list[Chunk]]]]]] = deque()
        in_flight = 0

        def finish() -> tuple[T, list[Chunk]]:
            nonlocal in_flight
            item, parts = pending.popleft()
            in_flight -= sum(size for _, size, _ in parts)
            return item, self._join((start, f.result()) for start, _, f in parts)

        for item in items:
            text = text_of(item)
            parts = []
            for start, end in _blocks(text, BLOCK_CHARS):
                parts.append((start, end - start, self._pool.submit(self._chunk_block, text, start, end)))
                in_flight += end - start
            pending.append((item, parts))
            while pending and (in_flight >= window_bytes or all(f.done() for _, _, f in pending[0][1])):
                yield finish()
        while pending:
            yield finish()

    def _pack(self, doc: _Document) -> list[Chunk]:
        opts = self.options
        text = doc.text
        positions, levels = doc.positions.tolist(), doc.levels.tolist()
        cum: list[int] = doc.cum.tolist()
        # boundary indices at or above each preferred level, for O(log n) look-ups
        by_level = {lv: np.flatnonzero(doc.levels >= lv).tolist() for lv in (PARAGRAPH, LINE, SENTENCE)}
        last = len(positions) - 1
        fewest = self._fewest_chunks_from(cum, by_level[SENTENCE])
        half = (opts.max_tokens + 1) // 2
        chunks: list[Chunk] = []
        start_pos, start_idx = 0, 0
        safe_start = True  # the start is a safe boundary (positions[start_idx])
        min_end = 1  # index of the first boundary past the previous chunk's end
        while start_pos < len(text):
            if safe_start:
                cum_start, lo = cum[start_idx], max(min_end, start_idx + 1)
            else:
                cum_start, lo = int(doc.tokens_before(np.array([start_pos]))[0]), min_end
            far = bisect_right(cum, cum_start + opts.max_tokens) - 1
            if far >= lo:
                end_idx = far
                if levels[far] != _EDGE:
                    end_idx = self._best_end(cum, by_level, fewest, lo, far, cum_start + half)
                end_pos = positions[end_idx]
                exact = safe_start and self.additive
                count = cum[end_idx] - cum_start if exact else self.count(text[start_pos:end_pos])
                while count > opts.max_tokens and end_idx > lo:  # non-additive: step back
                    end_idx -= 1
                    end_pos = positions[end_idx]
                    count = self.count(text[start_pos:end_pos])
                if count <= opts.max_tokens:
                    chunks.append(Chunk(len(chunks), start_pos, end_pos, text[start_pos:end_pos], count))
                    if end_idx == last:
                        break
                    start_idx = self._overlap_start(cum, end_idx, start_idx if safe_start else end_idx)
                    start_pos, safe_start, min_end = positions[start_idx], True, end_idx + 1
                    continue
            # No boundary within the budget: cut between tokens at a character boundary.
            end_pos, count = self._token_cut(doc, start_pos, cum_start)
            chunks.append(Chunk(len(chunks), start_pos, end_pos, text[start_pos:end_pos], count))
            start_pos = end_pos
            at = bisect_left(positions, start_pos)
            safe_start = at <= last and positions[at] == start_pos
            start_idx = at if safe_start else 0
            min_end = bisect_right(positions, start_pos)
        return chunks

    @staticmethod
    def _best_end(
        cum: list[int], by_level: dict[int, list[int]], fewest: list[int], lo: int, far: int, half: int
    ) -> int:
        """Where a chunk that may end anywhere in [lo, far] ends.

        Any end in [window, far] leaves the rest coverable in as few chunks as ending at `far`
        does. There, the highest level wins (paragraph, line, sentence), the farthest of it;
        ends that fill at least half the budget first, so chunks stay even.
        """
        window = max(lo, fewest[bisect_right(fewest, far) - 1])
        for floor in (max(window, bisect_left(cum, half)), window):
            for level in (PARAGRAPH, LINE, SENTENCE):
                idx = by_level[level]
                j = bisect_right(idx, far) - 1
                if j >= 0 and idx[j] >= floor:
                    return idx[j]
        return far

    def _fewest_chunks_from(self, cum: list[int], ends: list[int]) -> list[int]:
        """Boundary indices s_J < ... < s_1 < s_0 = last: from any position at or after s_j the
        rest of the document fits in j chunks that end at `ends` (sentence or higher level).

        Built back to front, one bisection per chunk: this is the fewest chunks that never cut
        inside a sentence (chonkie's RecursiveChunker makes the same promise), with the budget
        less the overlap, which is what each chunk adds. A sentence wider than the budget is
        crossed at the earliest word (or token) boundary within reach.
        """
        step = self.options.max_tokens - self.options.overlap_tokens
        at = [cum[i] for i in ends]
        s = ends[-1]
        starts = [s]
        while s > 0:
            target = cum[s] - step
            j = bisect_left(at, target)
            if ends[j] < s:  # the earliest sentence (or higher) end within reach
                s = ends[j]
            else:  # a sentence wider than the budget: crossed at a word (or token) boundary
                k = bisect_left(cum, target, 0, s)
                s = k if k < s else s - 1
            starts.append(s)
        starts.reverse()
        return starts

    def _overlap_start(self, cum: list[int], end_idx: int, start_idx: int) -> int:
        """Earliest boundary after the chunk start whose suffix fits the overlap budget.

        The budget also leaves room for the next segment, so the next chunk always advances.
        """
        next_segment = cum[end_idx + 1] - cum[end_idx]
        budget = min(self.options.overlap_tokens, self.options.max_tokens - next_segment)
        if budget <= 0:
            return end_idx
        k = bisect_left(cum, cum[end_idx] - budget)
        return min(max(k, start_idx + 1), end_idx)

    def _token_cut(self, doc: _Document, start_pos: int, cum_start: int) -> tuple[int, int]:
        """Longest prefix from `start_pos` that fits the budget, cut between two tokens."""
        tokens = min(cum_start + self.options.max_tokens, doc.total_tokens)
        text = doc.text
        while True:
            end_pos = self._char_at_token(doc, tokens, start_pos)
            if end_pos > start_pos:
                count = self.count(text[start_pos:end_pos])
                if count <= self.options.max_tokens:
                    return end_pos, count
            if tokens <= cum_start + 1:
                # A single character never exceeds MIN_MAX_TOKENS tokens.
                end_pos = start_pos + 1
                return end_pos, self.count(text[start_pos:end_pos])
            tokens -= 1

    @staticmethod
    def _char_at_token(doc: _Document, tokens: int, start_pos: int) -> int:
        """Character position at the end of the first `tokens` document tokens, rounded down."""
        if tokens <= 0:
            return start_pos
        byte = int(doc.token_ends[tokens - 1])
        if doc.char_bytes is None:
            return byte
        return int(np.searchsorted(doc.char_bytes, byte, side="right")) - 1
