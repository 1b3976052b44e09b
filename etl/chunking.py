"""Token-aware chunking with exact token counts and exact character spans.

Each document is encoded once and cut at safe boundaries (boundaries.py), where a chunk's
token count is a subtraction, not a second encode. Chunks prefer paragraph, then line, then
sentence, then word boundaries, in as few chunks as never cutting inside a sentence allows;
a span with no boundary within the budget is cut between tokens (at a character boundary)
and re-counted. Encodings not proven additive get every chunk re-counted.
"""

from __future__ import annotations

import os
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from aistack.etl.boundaries import (
    EDGE,
    LINE,
    PARAGRAPH,
    SENTENCE,
    WORD,
    TokenBytes,
    TokenizedDocument,
    blocks,
)
from aistack.etl.encodings import DEFAULT_ENCODING, encoding_is_additive, load_encoding
from aistack.etl.token_boundaries import TokenFacts

__all__ = ["LINE", "PARAGRAPH", "SENTENCE", "WORD", "Chunk", "Chunker", "ChunkingOptions"]
BLOCK_CHARS = 1 << 18  # long documents are chunked in blocks of about this many characters
MIN_MAX_TOKENS = 8  # one code point can take up to 4 byte-level tokens
T = TypeVar("T")
J = TypeVar("J")
_Part = tuple[int, "list[Chunk] | Future[list[Chunk]]"]  # a block's start and its chunks (or their future)


def _result(part: list[Chunk] | Future[list[Chunk]]) -> list[Chunk]:
    return part.result() if isinstance(part, Future) else part


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


class Chunker:
    """Splits documents into chunks of at most `max_tokens` tokens with `overlap_tokens` overlap."""

    def __init__(self, options: ChunkingOptions | None = None, *, threads: int | None = None) -> None:
        self.options = options or ChunkingOptions()
        self.encoding = load_encoding(self.options.encoding)
        self.additive = encoding_is_additive(self.options.encoding)
        self._token_bytes = TokenBytes(self.encoding)
        self._facts = TokenFacts.whole_vocabulary(self.encoding)
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
        return self._pack(TokenizedDocument(block, self._encode(block), self._token_bytes, self._facts))

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
        return self._join((s, self._chunk_block(text, s, e)) for s, e in blocks(text, BLOCK_CHARS))

    def chunk_many(self, texts: Sequence[str]) -> list[list[Chunk]]:
        """Chunk several documents on the thread pool (tiktoken and numpy drop the GIL)."""
        return [chunks for _, chunks in self.chunk_stream(texts, lambda t: t)]

    def chunk_stream(
        self, items: Iterable[T], text_of: Callable[[T], str], window_bytes: int = 4 << 20
    ) -> Iterator[tuple[T, list[Chunk]]]:
        """Chunk a stream in order, with up to `window_bytes` of documents in flight on the pool."""
        for item, chunks in self.map_chunked(
            items, lambda it: [(it, text_of(it))], lambda it: len(text_of(it)), window_bytes
        ):
            yield item, chunks or []

    def map_chunked(
        self,
        jobs: Iterable[J],
        prepare: Callable[[J], list[tuple[T, str | None]]],
        size_of: Callable[[J], int],
        window_bytes: int = 4 << 20,
        batch_bytes: int = 1 << 16,
    ) -> Iterator[tuple[T, list[Chunk] | None]]:
        """Prepare and chunk jobs on the pool, in order, up to `window_bytes` (by `size_of`) in flight.

        `prepare(job)` runs in a worker (loading, cleaning: whatever makes the text) and returns
        items with their text, or None for an item with nothing to chunk (it comes back with None).
        Consecutive small jobs go to a worker together (up to `batch_bytes`): their boundaries
        are found in one pass. A long text's blocks after the first go back on the pool, so one
        document's blocks run in parallel; the caller's work on finished documents (writing
        Parquet) overlaps everything else.
        """
        pending: deque[tuple[int, Future[list[tuple[T, list[_Part] | None]]]]] = deque()
        in_flight = 0
        batch: list[J] = []
        batch_size = 0

        def finish() -> Iterator[tuple[T, list[Chunk] | None]]:
            nonlocal in_flight
            size, future = pending.popleft()
            in_flight -= size
            for item, parts in future.result():
                yield item, None if parts is None else self._join((start, _result(p)) for start, p in parts)

        def submit() -> None:
            nonlocal batch, batch_size, in_flight
            pending.append((batch_size, self._pool.submit(self._prepare_and_chunk, prepare, batch)))
            in_flight += batch_size
            batch, batch_size = [], 0

        for job in jobs:
            batch.append(job)
            batch_size += size_of(job)
            if batch_size >= batch_bytes or len(batch) >= 256:
                submit()
            while pending and (in_flight >= window_bytes or pending[0][1].done()):
                yield from finish()
        if batch:
            submit()
        while pending:
            yield from finish()

    def _prepare_and_chunk(
        self, prepare: Callable[[J], list[tuple[T, str | None]]], jobs: list[J]
    ) -> list[tuple[T, list[_Part] | None]]:
        done: list[tuple[T, list[_Part] | None]] = []
        small: list[tuple[int, str]] = []  # (index in done, text) of texts that are one block
        for job in jobs:
            for item, text in prepare(job):
                if text is None:
                    done.append((item, None))
                elif len(text) <= BLOCK_CHARS:
                    small.append((len(done), text))
                    done.append((item, None))
                else:
                    spans = list(blocks(text, BLOCK_CHARS))
                    later = [(a, self._pool.submit(self._chunk_block, text, a, b)) for a, b in spans[1:]]
                    first = (spans[0][0], self._chunk_block(text, *spans[0]))
                    done.append((item, [first, *later]))
        for (at, _), chunks in zip(small, self._chunk_texts([t for _, t in small]), strict=True):
            done[at] = (done[at][0], [(0, chunks)])
        return done

    def _chunk_texts(self, texts: list[str]) -> list[list[Chunk]]:
        """Chunk texts of at most one block each, their boundaries found together."""
        tokens = [self._encode(t) for t in texts]
        docs = TokenizedDocument.many(texts, tokens, self._token_bytes, self._facts)
        return [self._pack(d) for d in docs]

    def _pack(self, doc: TokenizedDocument) -> list[Chunk]:
        opts = self.options
        text = doc.text
        positions, levels = doc.positions, doc.levels  # read a few times per chunk: no lists
        cum: list[int] = doc.cum.tolist()  # bisected several times per chunk
        # boundary indices at or above each preferred level, for O(log n) look-ups
        up = np.flatnonzero(levels >= SENTENCE)
        up_levels = levels[up]
        by_level = {
            SENTENCE: up.tolist(),
            LINE: up[up_levels >= LINE].tolist(),
            PARAGRAPH: up[up_levels >= PARAGRAPH].tolist(),
        }
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
                if levels[far] != EDGE:
                    end_idx = self._best_end(cum, by_level, fewest, lo, far, cum_start + half)
                end_pos = int(positions[end_idx])
                exact = safe_start and self.additive
                count = cum[end_idx] - cum_start if exact else self.count(text[start_pos:end_pos])
                while count > opts.max_tokens and end_idx > lo:  # non-additive: step back
                    end_idx -= 1
                    end_pos = int(positions[end_idx])
                    count = self.count(text[start_pos:end_pos])
                if count <= opts.max_tokens:
                    chunks.append(Chunk(len(chunks), start_pos, end_pos, text[start_pos:end_pos], count))
                    if end_idx == last:
                        break
                    start_idx = self._overlap_start(cum, end_idx, start_idx if safe_start else end_idx)
                    start_pos, safe_start, min_end = int(positions[start_idx]), True, end_idx + 1
                    continue
            # No boundary within the budget: cut between tokens at a character boundary.
            end_pos, count = self._token_cut(doc, start_pos, cum_start)
            chunks.append(Chunk(len(chunks), start_pos, end_pos, text[start_pos:end_pos], count))
            start_pos = end_pos
            at = int(np.searchsorted(positions, start_pos))
            safe_start = at <= last and int(positions[at]) == start_pos
            start_idx = at if safe_start else 0
            min_end = int(np.searchsorted(positions, start_pos, side="right"))
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

    def _token_cut(self, doc: TokenizedDocument, start_pos: int, cum_start: int) -> tuple[int, int]:
        """Longest prefix from `start_pos` that fits the budget, cut between two tokens."""
        tokens = min(cum_start + self.options.max_tokens, doc.total_tokens)
        text = doc.text
        while True:
            end_pos = doc.char_at_token(tokens, start_pos)
            if end_pos > start_pos:
                count = self.count(text[start_pos:end_pos])
                if count <= self.options.max_tokens:
                    return end_pos, count
            if tokens <= cum_start + 1:
                # A single character never exceeds MIN_MAX_TOKENS tokens.
                end_pos = start_pos + 1
                return end_pos, self.count(text[start_pos:end_pos])
            tokens -= 1
