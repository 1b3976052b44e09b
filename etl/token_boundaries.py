"""Safe boundaries computed on tokens instead of characters: the same positions, 4x fewer items.

Every safe boundary (boundaries.py) starts a pre-tokenizer piece, so it starts a token. When
each token of a document decodes to whole characters on its own ("clean": no character is
split between tokens), the characters on either side of a token start are the last of the
previous token and the first of the next, so the character rules can be evaluated per token
from facts about each vocabulary entry. Those facts are learned the first time a token
appears, or all at once from a cache file (`TokenFacts.whole_vocabulary`). A document with a
split character is left to the character-level computation.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tiktoken

from aistack.etl import boundaries
from aistack.etl.boundaries import (
    _CLOSER,
    _ENDER,
    _LN,
    _NL,
    _WS,
    EDGE,
    LINE,
    PARAGRAPH,
    SENTENCE,
    WORD,
    char_classes,
)
from aistack.etl.cache_files import cache_path, read_checked, write_checked
from aistack.etl.encodings import content_key

_UNSEEN, _UNCLEAN = 1 << 15, 1 << 14
F_WS, F_NL, F_LEADNL = 1, 2, 4  # first character: whitespace, newline; newline in the leading whitespace
L_WS, L_LN, L_NL, L_ENDER, L_CLOSER = 8, 16, 32, 64, 128  # last character
L2_ENDER, ONE_CHAR, ALL_WS, HAS_NL = 256, 512, 1024, 2048


class TokenFacts:
    """Per-token facts about its text (bits above, character count, line feeds in the trailing
    whitespace), filled for the tokens that appear."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding
        self.bits = np.full(encoding.n_vocab, _UNSEEN, dtype=np.uint16)
        self.chars = np.zeros(encoding.n_vocab, dtype=np.int32)
        self.trailing_lf = np.zeros(encoding.n_vocab, dtype=np.int32)
        # the word rule's inputs in one byte: first char whitespace (1), newline (2); last char
        # whitespace (4), letter or number (8)
        self.word_code = np.zeros(encoding.n_vocab, dtype=np.uint8)
        self._lock = threading.Lock()

    @classmethod
    def whole_vocabulary(cls, encoding: tiktoken.Encoding) -> TokenFacts:
        """The facts of every token: read from a cache file, else learned (about 0.12 s on 2
        cores for cl100k_base, against 0.16 s to learn a 13 MB corpus's tokens piecemeal) and
        cached for the next process."""
        facts = cls(encoding)
        path = _cache_file(encoding)
        payload = read_checked(path) if path else None
        if payload is None or not facts._restore(payload):
            facts._learn(list(range(encoding.n_vocab)))
            if path:
                payload = b"".join(getattr(facts, name).tobytes() for name in _TABLES)
                write_checked(path, payload, replaces=f"{encoding.name}.token-facts-*.bin")
        return facts

    def _restore(self, payload: bytes) -> bool:
        sizes = [getattr(self, name).nbytes for name in _TABLES]
        if len(payload) != sum(sizes):
            return False
        at = 0
        for name, size in zip(_TABLES, sizes, strict=True):
            table = getattr(self, name)
            setattr(self, name, np.frombuffer(payload, dtype=table.dtype, count=len(table), offset=at).copy())
            at += size
        return True

    def of(self, tokens: np.ndarray) -> np.ndarray:
        bits = self.bits[tokens]
        if len(bits) and int(bits.max()) >= _UNSEEN:
            self._learn(np.unique(tokens[(bits & _UNSEEN) != 0]).tolist())
            bits = self.bits[tokens]
        return bits

    def _learn(self, tokens: list[int]) -> None:
        """Facts of new tokens, computed over all of their characters at once."""
        texts: list[str | None] = []
        for t in tokens:
            try:
                texts.append(self.encoding.decode_single_token_bytes(t).decode("utf-8"))
            except (UnicodeDecodeError, KeyError):  # a token that splits a character (or a hole)
                texts.append(None)
        clean = [i for i, s in enumerate(texts) if s]
        bits = np.full(len(tokens), _UNCLEAN, dtype=np.uint16)
        chars = np.zeros(len(tokens), dtype=np.int32)
        trailing = np.zeros(len(tokens), dtype=np.int32)
        if clean:
            pieces = [texts[i] or "" for i in clean]
            lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
            ends = np.cumsum(lengths)
            starts = ends - lengths
            joined = "".join(pieces)
            cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
            cls = char_classes().of(cps)
            idx = np.arange(len(cls))
            ws, nl, lf = (cls & _WS) != 0, (cls & _NL) != 0, cps == 10
            big = len(cls) + 1
            first_solid = np.minimum.reduceat(np.where(ws, big, idx), starts)  # big: all whitespace
            last_solid = np.maximum.reduceat(np.where(ws, -1, idx), starts)  # -1: all whitespace
            nl_before = np.concatenate(([0], np.cumsum(nl)))
            lf_before = np.concatenate(([0], np.cumsum(lf)))
            first, last = cls[starts], cls[ends - 1]
            second = np.where(lengths >= 2, cls[np.maximum(ends - 2, 0)], 0)
            lead_end = np.minimum(first_solid, ends)
            b = np.zeros(len(clean), dtype=np.uint16)
            b |= np.where(first & _WS, F_WS, 0).astype(np.uint16)
            b |= np.where(first & _NL, F_NL, 0).astype(np.uint16)
            b |= np.where(nl_before[lead_end] > nl_before[starts], F_LEADNL, 0).astype(np.uint16)
            for flag, bit in ((L_WS, _WS), (L_LN, _LN), (L_NL, _NL), (L_ENDER, _ENDER), (L_CLOSER, _CLOSER)):
                b |= np.where(last & bit, flag, 0).astype(np.uint16)
            b |= np.where(second & _ENDER, L2_ENDER, 0).astype(np.uint16)
            b |= np.where(lengths == 1, ONE_CHAR, 0).astype(np.uint16)
            b |= np.where(first_solid >= ends, ALL_WS, 0).astype(np.uint16)
            b |= np.where(nl_before[ends] > nl_before[starts], HAS_NL, 0).astype(np.uint16)
            tail_start = np.where(last_solid >= starts, last_solid + 1, starts)
            bits[clean], chars[clean] = b, lengths
            trailing[clean] = lf_before[ends] - lf_before[tail_start]
        code = (
            ((bits & F_WS) != 0) * 1
            + ((bits & F_NL) != 0) * 2
            + ((bits & L_WS) != 0) * 4
            + ((bits & L_LN) != 0) * 8
        ).astype(np.uint8)
        with self._lock:
            self.chars[tokens] = chars
            self.trailing_lf[tokens] = trailing
            self.word_code[tokens] = code
            self.bits[tokens] = bits  # last: a reader that sees the bits sees the rest


_TABLES = ("bits", "chars", "trailing_lf", "word_code")


def _cache_file(encoding: tiktoken.Encoding) -> Path | None:
    """Named by everything the facts follow from: the encoding's content, the code that computes
    them and the Unicode tables of `regex` (boundaries._CharClasses); None when any cannot be read."""
    key = hashlib.sha256(f"{content_key(encoding.name)}\0{encoding._pat_str}\0{encoding.n_vocab}".encode())
    try:
        for source in (boundaries.__file__, __file__):
            key.update(Path(source).read_bytes())
        key.update(_regex_version())
    except OSError:  # sources not on disk (a zip import): no cache, only slower
        return None
    return cache_path(f"{encoding.name}.token-facts-{key.hexdigest()[:16]}.bin")


def _regex_version() -> bytes:
    """The file of `regex` that holds its version (which pins its Unicode tables), read without
    importing it; else its version, imported."""
    spec = importlib.util.find_spec("regex")
    main = Path(spec.origin).with_name("_main.py") if spec is not None and spec.origin else None
    if main is not None and main.is_file():
        return main.read_bytes()
    import regex

    return str(regex.__version__).encode()


# word_code of the previous token << 4 | word_code of this one -> a word boundary at this one?
# Previous last char not whitespace, this first char whitespace, unless punctuation meets a newline.
_WORD = np.array(
    [bool(c & 1) and not p & 4 and (bool(p & 8) or not c & 2) for p in range(16) for c in range(16)],
    dtype=bool,
)


Found = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def token_level(tokens: np.ndarray, facts: TokenFacts) -> Found | None:
    """(positions, levels, tokens before each position, character end of each token), or None
    when a token splits a character (the caller computes on characters then)."""
    return token_level_many([tokens], facts)[0]


def token_level_many(documents: list[np.ndarray], facts: TokenFacts) -> list[Found | None]:
    """`token_level` of several documents in one pass over their concatenated tokens: numpy's
    cost per call, not per token, is what small documents pay, so they are done together.
    Nothing crosses a document's edge: every rule looks only at tokens of its own document."""
    sizes = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
    ends = np.cumsum(sizes)
    starts = ends - sizes
    tokens = np.concatenate(documents) if documents else np.zeros(0, np.uint32)
    count = len(tokens)
    bits = facts.of(tokens)
    char_ends = np.cumsum(facts.chars[tokens], dtype=np.int64)
    level = np.full(max(count - 1, 0), -1, dtype=np.int8)  # at each token start i = 1 .. count-1
    if count >= 2:

        def document_of(i: np.ndarray) -> np.ndarray:  # the document holding each token index
            return np.searchsorted(starts, i, side="right") - 1

        # word/sentence, from one table look-up per token start
        code = facts.word_code[tokens]
        at = np.flatnonzero(_WORD[(code[:-1] << 4) | code[1:]])
        p = bits[at]  # the token before each word boundary (index at), the boundary is at + 1
        before2 = bits[np.maximum(at - 1, 0)]  # the token before that one, if in the same document
        has_before2 = at > starts[document_of(at)]
        closer = ((p & L_CLOSER) != 0) & (
            ((p & L2_ENDER) != 0) | (((p & ONE_CHAR) != 0) & ((before2 & L_ENDER) != 0) & has_before2)
        )
        level[at] = np.where(((p & L_ENDER) != 0) | closer, SENTENCE, WORD)
        _lines(tokens, bits, facts, starts, ends, document_of, level)
        level[starts[(starts > 0) & (starts < count)] - 1] = -1  # a document's first token: its edge
    at = np.flatnonzero(level >= 0) + 1  # token indices of the boundaries, in order
    char_starts = np.concatenate(([0], char_ends))
    clean = np.ones(len(documents), dtype=bool)
    if count:  # per document: no token that splits a character (empty ones are clean)
        clean[sizes > 0] = np.maximum.reduceat(bits, starts[sizes > 0]) < _UNCLEAN
    lo, hi = np.searchsorted(at, starts, side="right"), np.searchsorted(at, ends)
    found: list[Found | None] = []
    for k in range(len(documents)):
        first, size = int(starts[k]), int(sizes[k])
        if size == 0:
            empty = np.zeros(1, dtype=np.int64)
            found.append((empty, np.array([EDGE], dtype=np.int64), empty.copy(), np.zeros(0, np.int64)))
            continue
        if not clean[k]:
            found.append(None)
            continue
        base = int(char_starts[first])
        ends_k = char_ends[first : first + size] - base
        inner = at[lo[k] : hi[k]]
        positions = np.concatenate(([0], char_starts[inner] - base, [ends_k[-1]]))
        levels = np.concatenate(([EDGE], level[inner - 1], [EDGE])).astype(np.int64)
        cum = np.concatenate(([0], inner - first, [size]))
        found.append((positions, levels, cum, ends_k))
    return found


def _lines(
    tokens: np.ndarray,
    bits: np.ndarray,
    facts: TokenFacts,
    starts: np.ndarray,
    ends: np.ndarray,
    document_of: Callable[[np.ndarray], np.ndarray],
    level: np.ndarray,
) -> None:
    """Mark line/paragraph boundaries: text[p-1] a newline, no newline later in its whitespace
    run, and a non-whitespace character of the same document ends the run. Whitespace-only
    ("blank") tokens are few: the runs are found among them."""
    cand = np.flatnonzero(bits[:-1] & L_NL) + 1  # token indices i
    if not len(cand):
        return
    doc = document_of(cand)
    first, last = starts[doc], ends[doc]
    blank = np.flatnonzero(bits & ALL_WS)
    breaks = np.flatnonzero(np.diff(blank) != 1)
    run_first = np.append(np.concatenate((blank[:1], blank[breaks + 1])), len(tokens))
    run_last = np.concatenate((blank[breaks], blank[-1:]))
    # the first non-blank token at or after i
    r = np.searchsorted(run_last, cand)
    in_run = run_first[r] <= cand
    run_end = np.where(in_run, np.append(run_last, len(tokens))[r] + 1, cand)
    # newlines in blank tokens in [i, run_end); line feeds of blank tokens before i
    tok_blank = tokens[blank]
    nl_before = np.concatenate(([0], np.cumsum((facts.bits[tok_blank] & HAS_NL) != 0)))
    lf_before = np.concatenate(([0], np.cumsum(facts.trailing_lf[tok_blank], dtype=np.int64)))
    lo, hi = np.searchsorted(blank, cand), np.searchsorted(blank, run_end)
    ok = (run_end < last) & (nl_before[hi] == nl_before[lo])
    ok &= (bits[np.minimum(run_end, len(tokens) - 1)] & F_LEADNL) == 0
    # the run's start: after the last non-blank token before i in the document (none: its start)
    q = np.searchsorted(run_last, cand - 1)
    prev_in_run = run_first[q] <= cand - 1
    last_solid = np.maximum(np.where(prev_in_run, run_first[q] - 1, cand - 1), first - 1)
    solid = last_solid >= first
    feeds = np.where(solid, facts.trailing_lf[tokens[np.maximum(last_solid, 0)]], 0).astype(np.int64)
    feeds += lf_before[lo] - lf_before[np.searchsorted(blank, last_solid + 1)]
    cand, feeds = cand[ok], feeds[ok]
    level[cand - 1] = np.where(feeds >= 2, PARAGRAPH, LINE)
