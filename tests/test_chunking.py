"""Property tests: the chunker's guarantees on arbitrary Unicode."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aistack.etl.chunking import Chunker, ChunkingOptions
from aistack.etl.encodings import load_encoding

ENC = load_encoding("cl100k_base")

# Prose-like text that exercises every boundary kind, plus fully arbitrary Unicode.
_pieces = st.sampled_from(
    [
        "the",
        "Token",
        "ünïcödé",
        "日本語のテキスト",
        "42",
        "1234567",
        "'s",
        ".",
        "!",
        "?",
        ",",
        "(",
        ")",
        '"',
        "”",
        "—",
        " ",
        "  ",
        "\t",
        "\n",
        "\n\n",
        "\r\n",
        " \n ",
        "\u00a0",
        "\u3000",
        "🙂",
        "e\u0301",
        "<|endoftext|>",
        "x" * 40,
        "https://example.com/a/b?c=d",
    ]
)
prose = st.lists(_pieces, max_size=120).map("".join)
anything = st.text(max_size=400)
texts = st.one_of(prose, anything)
options = st.integers(8, 64).flatmap(
    lambda m: st.builds(ChunkingOptions, max_tokens=st.just(m), overlap_tokens=st.integers(0, m - 1))
)


def _check(text: str, opts: ChunkingOptions) -> None:
    chunker = Chunker(opts, threads=1)
    chunks = chunker.chunk(text)
    if not text:
        assert chunks == []
        return
    assert chunks[0].start == 0 and chunks[-1].end == len(text), "the whole text is covered"
    for i, c in enumerate(chunks):
        assert c.index == i
        assert text[c.start : c.end] == c.text, "span is exact"
        assert c.text, "no empty chunk"
        assert c.token_count == len(ENC.encode_ordinary(c.text)), "count is exact"
        assert c.token_count <= opts.max_tokens, "never over budget"
    for prev, nxt in itertools.pairwise(chunks):
        assert prev.start < nxt.start <= prev.end < nxt.end, "advances with no gap"
        shared = text[nxt.start : prev.end]
        assert len(ENC.encode_ordinary(shared)) <= opts.overlap_tokens, "overlap within budget"
    chunker.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, opts=options)
def test_chunk_guarantees_hold_on_arbitrary_text(text: str, opts: ChunkingOptions) -> None:
    _check(text, opts)


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta."]), min_size=200, max_size=400))
def test_overlap_is_used_on_prose(words: list[str]) -> None:
    text = " ".join(words)
    opts = ChunkingOptions(max_tokens=40, overlap_tokens=10)
    chunks = Chunker(opts, threads=1).chunk(text)
    assert len(chunks) > 2
    for prev, nxt in itertools.pairwise(chunks):
        shared = len(ENC.encode_ordinary(text[nxt.start : prev.end]))
        # words are 1-2 tokens, so the largest boundary-aligned suffix is within 2 of the budget
        assert opts.overlap_tokens - 2 <= shared <= opts.overlap_tokens


def test_prefers_paragraph_then_sentence_boundaries() -> None:
    para = "One sentence here. Another sentence follows it. " * 6
    text = (para.strip() + "\n\n") * 4
    chunks = Chunker(ChunkingOptions(max_tokens=120, overlap_tokens=0)).chunk(text)
    assert all(c.text.endswith("\n\n") or c.end == len(text) for c in chunks)
    long_para = "Short words in a sentence. " * 40
    chunks = Chunker(ChunkingOptions(max_tokens=50, overlap_tokens=0)).chunk(long_para)
    assert all(c.text.endswith(".") or c.end == len(long_para) for c in chunks)


def test_text_without_boundaries_is_cut_between_tokens() -> None:
    text = "日本語" * 300 + "🙂" * 50
    chunks = Chunker(ChunkingOptions(max_tokens=16, overlap_tokens=4)).chunk(text)
    assert "".join(c.text for c in chunks) == text
    assert all(0 < c.token_count <= 16 for c in chunks)


def test_chunking_is_deterministic() -> None:
    text = "Deterministic output. " * 500
    a = Chunker(ChunkingOptions(64, 8)).chunk(text)
    b = Chunker(ChunkingOptions(64, 8), threads=2).chunk_many([text, text])
    assert a == b[0] == b[1]


@pytest.mark.parametrize(("max_tokens", "overlap"), [(4, 0), (64, 64), (64, -1)])
def test_bad_options_name_the_field(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError, match=r"chunking\.(maxTokens|overlapTokens)"):
        ChunkingOptions(max_tokens=max_tokens, overlap_tokens=overlap)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, opts=options)
def test_guarantees_hold_across_blocks(text: str, opts: ChunkingOptions) -> None:
    """Long documents are chunked block by block; shrink the block so every example crosses some."""
    from aistack.etl import chunking

    saved = chunking.BLOCK_CHARS
    chunking.BLOCK_CHARS = 48
    try:
        _check(text, opts)
    finally:
        chunking.BLOCK_CHARS = saved


_sentences = st.lists(
    st.tuples(
        st.lists(
            st.sampled_from(["word", "Token", "ünï", "日本語", "42", "a", "x" * 12]), min_size=1, max_size=12
        ),
        st.sampled_from([". ", "! ", "? ", ".\n", ".\n\n", "\n", "\n\n"]),
    ),
    min_size=1,
    max_size=40,
).map(lambda ss: "".join(" ".join(words) + end for words, end in ss).strip())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_sentences, max_tokens=st.integers(24, 80))
def test_packs_into_the_fewest_chunks_that_never_cut_a_sentence(text: str, max_tokens: int) -> None:
    """Overlap 0: as few chunks as any split at sentence-or-higher boundaries can make (checked by
    a brute-force DP over those boundaries), so no recursive splitter can make fewer."""
    from aistack.etl.boundaries import SENTENCE, TokenBytes, TokenizedDocument

    chunker = Chunker(ChunkingOptions(max_tokens, 0), threads=1)
    doc = TokenizedDocument(text, chunker._encode(text), TokenBytes(ENC))
    ends = [int(p) for p, lv in zip(doc.positions, doc.levels, strict=True) if lv >= SENTENCE]
    widest = max(len(ENC.encode_ordinary(text[a:b])) for a, b in itertools.pairwise(ends))
    assume(widest <= max_tokens)  # a wider sentence may be cut at words: the DP does not apply
    fewest = [0] + [len(ends)] * (len(ends) - 1)
    for b in range(1, len(ends)):
        for a in range(b):
            if len(ENC.encode_ordinary(text[ends[a] : ends[b]])) <= max_tokens:
                fewest[b] = min(fewest[b], fewest[a] + 1)
    chunks = chunker.chunk(text)
    assert len(chunks) == fewest[-1]
    assert all(c.end in ends for c in chunks), "every cut at a sentence, line or paragraph end"


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts)
def test_token_level_boundaries_equal_the_character_level_ones(text: str) -> None:
    """Where every token holds whole characters, boundaries are computed per token: the very
    positions, levels and token counts the character-level rules give."""
    from aistack.etl.boundaries import TokenBytes, TokenizedDocument
    from aistack.etl.token_boundaries import TokenFacts, token_level

    assume(text)  # the chunker never builds an empty document
    tokens = ENC.encode_to_numpy(text, disallowed_special=())
    found = token_level(tokens, TokenFacts(ENC))
    by_chars = TokenizedDocument(text, tokens, TokenBytes(ENC))
    if found is None:
        assert any(
            b"".join([ENC.decode_single_token_bytes(t)]).decode("utf-8", "replace")
            != ENC.decode_single_token_bytes(t).decode("utf-8", "ignore")
            for t in tokens.tolist()
        )
        return
    positions, levels, cum, char_ends = found
    assert positions.tolist() == by_chars.positions.tolist()
    assert levels.tolist() == by_chars.levels.tolist()
    assert cum.tolist() == by_chars.cum.tolist()
    assert (len(char_ends) and int(char_ends[-1])) == len(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(texts, max_size=6))
def test_documents_batched_get_the_boundaries_they_get_alone(batch: list[str]) -> None:
    """Small documents share one pass over their concatenated tokens; nothing crosses an edge."""
    from aistack.etl.token_boundaries import TokenFacts, token_level, token_level_many

    facts = TokenFacts(ENC)
    tokens = [ENC.encode_to_numpy(t, disallowed_special=()) for t in batch]
    together = token_level_many(tokens, facts)
    for alone, found in zip((token_level(t, facts) for t in tokens), together, strict=True):
        assert (alone is None) == (found is None)
        if alone is not None and found is not None:
            assert [a.tolist() for a in alone] == [f.tolist() for f in found]


def test_the_whole_vocabulary_facts_are_cached_and_equal_the_learned_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunker reads every token's facts from one cache file; they are the facts learned
    token by token, a corrupt file is rebuilt, and no cache at all is only slower."""
    import numpy as np

    from aistack.etl.token_boundaries import TokenFacts

    monkeypatch.setenv("AISTACK_CACHE_DIR", str(tmp_path))
    built = TokenFacts.whole_vocabulary(ENC)
    (cached,) = tmp_path.iterdir()
    learned = TokenFacts(ENC)
    for part in np.array_split(np.random.default_rng(7).permutation(ENC.n_vocab).astype(np.uint32), 5):
        learned.of(part)
    read = TokenFacts.whole_vocabulary(ENC)
    for name in ("bits", "chars", "trailing_lf", "word_code"):
        assert (
            getattr(read, name).tolist() == getattr(learned, name).tolist() == getattr(built, name).tolist()
        )
    good = cached.read_bytes()
    cached.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # the last token's word code: checksum fails
    rebuilt = TokenFacts.whole_vocabulary(ENC)
    assert rebuilt.word_code.tolist() == learned.word_code.tolist()
    assert cached.read_bytes() == good, "and the file rewritten"
    import tiktoken

    copy = tiktoken.Encoding(  # an encoding no package ships (as from TIKTOKEN_CACHE_DIR): cached too
        name="copy_of_cl100k",
        pat_str=ENC._pat_str,
        mergeable_ranks=ENC._mergeable_ranks,
        special_tokens=ENC._special_tokens,
    )
    assert TokenFacts.whole_vocabulary(copy).bits.tolist() == learned.bits.tolist()
    assert any(p.name.startswith("copy_of_cl100k.token-facts-") for p in tmp_path.iterdir())
    monkeypatch.setenv("AISTACK_CACHE_DIR", str(tmp_path / "file-not-dir"))
    (tmp_path / "file-not-dir").write_text("")
    assert TokenFacts.whole_vocabulary(ENC).bits.tolist() == learned.bits.tolist()
