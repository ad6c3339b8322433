"""Generation: the key/value cache draws what recomputation draws, every sample decodes, the
sampling controls do what they say, beam search finds the best sequence, and the stage writes
samples whose prompt is the song's opening."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
from pathlib import Path

import mido
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from builders import TINY_MODEL, shards_via_stages
from hypothesis import given, settings
from hypothesis import strategies as st

from midigen.data.bars import bar_steps_of
from midigen.data.corpus import EncodeConfig, load_shard
from midigen.data.download import read_manifest
from midigen.encodings import decode_song, whole_rows
from midigen.encodings.catalog import load_scheme
from midigen.encodings.index import NOTE, Grammar, Index
from midigen.encodings.scores import DecodeError, Vocab, decode_tokens
from midigen.errors import MidigenError
from midigen.generation.contexts import Carried, KVCache, Recompute
from midigen.generation.prompts import Prompt, split_song
from midigen.generation.sampling import GenerateConfig, generate, generate_batch, sample
from midigen.generation.writing import song_title
from midigen.models.lstm import LSTMConfig, MusicLSTM
from midigen.models.transformer import MEMORY_KINDS, ModelConfig, MusicTransformer
from midigen.params import load_params
from midigen.stages import generate as stage

ROOT = Path(__file__).resolve().parents[1]
VOCAB = Vocab(max_duration=4)
SCHEME = Index(VOCAB)
BAR = 16  # steps per bar of the random prompts
MEMORIES = tuple(MEMORY_KINDS)


@pytest.fixture(scope="module")
def chorales(tmp_path_factory) -> tuple[Path, Path]:
    """Shards and raw files of 40 bundled chorales, made by the real stages with the default
    encoding (a quarter of them in the test split)."""
    root = tmp_path_factory.mktemp("chorales")
    encode = load_params(ROOT / "params.yaml")["encode"]
    shards = shards_via_stages(
        root, encode, source="bach", max_files=40, val_fraction=0.1, test_fraction=0.25
    )
    return shards, root / "raw"


@functools.cache
def tiny(
    memory: str = "none", vocab: Vocab = VOCAB, seed: int = 0, **overrides
) -> MusicTransformer:
    """A small random model whose choices matter: token embeddings (and so the tied head) large
    enough for peaked distributions, a random position bias, an even kNN mix."""
    settings = dict(
        TINY_MODEL,
        vocab_size=len(vocab),
        dropout=0.0,
        segment_len=8,
        xl_mem_len=8,
        max_distance=64,
        bar_pos_size=BAR,
        memory=memory,
    )
    torch.manual_seed(seed)
    model = MusicTransformer(ModelConfig(**{**settings, **overrides})).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.tok_emb.weight, std=0.5)
        torch.nn.init.normal_(model.position_bias.table.weight)
        for block in model.blocks:
            if hasattr(block.attn, "memory_bias"):
                block.attn.memory_bias.fill_(1.0)
    return model


def random_prompt(seed: int, rows: int, vocab: Vocab = VOCAB) -> Prompt:
    """A valid opening of `rows` rows (notes and gaps, programs in instrument mode), with the
    bar position of every token, counted the way generate() counts it."""
    rng = np.random.default_rng(seed)
    grammar = Grammar(vocab)
    cursor, tokens, bars = grammar.start(), [vocab.sos], [0]
    for _ in range(rows):
        row = [vocab.sep] if rng.random() < 0.4 else [vocab.note(int(rng.integers(40, 90)))]
        if vocab.instruments and row != [vocab.sep] and (not cursor.program or rng.random() < 0.3):
            row.insert(0, vocab.program(int(rng.integers(0, 128))))
        row.append(vocab.duration(int(rng.integers(1, vocab.max_duration + 1))))
        for token in row:
            bars.append(cursor.step % BAR)
            tokens.append(token)
            cursor = grammar.advance(cursor, token)
    return Prompt(np.array(tokens), np.array(bars), BAR)


def full_forward(model: MusicTransformer, tokens: torch.Tensor, bars: torch.Tensor):
    """One pass over the whole sequence."""
    return model(tokens, bars)[0]


def segment_by_segment(model: MusicTransformer, tokens: torch.Tensor, bars: torch.Tensor):
    """Training's forward: segment after segment from the song's start, memories carried."""
    length, out, state = model.config.segment_len, [], None
    for s in range(0, tokens.shape[1], length):
        logits, _, state = model(tokens[:, s : s + length], bars[:, s : s + length], state=state)
        out.append(logits)
    return torch.cat(out, dim=1)


@torch.no_grad()
def recomputed(model, prompt: Prompt, config: GenerateConfig, forward) -> list[int]:
    """generate()'s sampling, with every step's logits from `forward` over the whole sequence
    so far: no cache, no state carried from one step to the next."""
    grammar = Grammar(VOCAB)
    cursor = grammar.parse(prompt.tokens.tolist())
    tokens, bars, drawn = prompt.tokens.tolist(), prompt.bar_pos.tolist(), []
    generator = torch.Generator().manual_seed(config.seed)
    while len(drawn) < config.length:
        logits = forward(model, torch.tensor([tokens]), torch.tensor([bars]))[:, -1]
        allowed = torch.as_tensor(grammar.allowed([cursor], eos=len(drawn) >= config.min_length))
        drawn.append(int(sample(logits, allowed, config, [generator])[0]))
        if drawn[-1] == VOCAB.eos:
            break
        tokens.append(drawn[-1])
        bars.append(prompt.bar_position(cursor.step))
        cursor = grammar.advance(cursor, drawn[-1])
    return drawn


@torch.no_grad()
def score(model, prompt: Prompt, drawn: list[int], min_length: int = 0) -> float:
    """Total log-probability of `drawn` after `prompt` under the grammar-masked model,
    teacher-forced through training's segment-by-segment forward."""
    grammar = Grammar(VOCAB)
    cursor = grammar.parse(prompt.tokens.tolist())
    bars, cursors = prompt.bar_pos.tolist(), []
    for token in drawn:
        cursors.append(cursor)
        bars.append(prompt.bar_position(cursor.step))
        cursor = grammar.advance(cursor, token)
    tokens = torch.tensor([[*prompt.tokens.tolist(), *drawn]])
    logits = segment_by_segment(model, tokens, torch.tensor([bars]))[0, len(prompt.tokens) - 1 :]
    total = 0.0
    for i, (token, before) in enumerate(zip(drawn, cursors, strict=True)):
        allowed = torch.as_tensor(grammar.allowed([before], eos=i >= min_length)[0])
        logp = F.log_softmax(logits[i].double().masked_fill(~allowed, float("-inf")), dim=-1)
        total += float(logp[token])
    return total


# ---- 1. the cache draws what recomputation draws -------------------------------------------------


@pytest.mark.parametrize("memory", MEMORIES)
def test_cached_generation_equals_a_full_forward_every_step(memory):
    """Inside one segment every variant sees the whole sequence: cache == recompute == one
    full pass per token, token for token, for a fixed seed."""
    model = tiny(memory, segment_len=40, xl_mem_len=40)
    prompt = random_prompt(1, rows=5)
    config = GenerateConfig(length=28, top_p=0.9, seed=3)
    cached = generate(model, prompt, SCHEME, config).tokens
    assert generate(model, prompt, SCHEME, config, context=Recompute).tokens == cached
    assert recomputed(model, prompt, config, full_forward) == cached
    assert len(prompt.tokens) + len(cached) <= 40 and len(cached) > 10


@pytest.mark.parametrize("memory", ["xl", "xl_knn"])
@pytest.mark.parametrize("mem_len", [8, 5, 13])
def test_cached_generation_past_several_segments_equals_training_forward(memory, mem_len):
    """Eight segments of 8 tokens: the cache pushes each finished segment into memory exactly as
    training's segment-by-segment forward does (XL memory shorter and longer than a segment)."""
    model = tiny(memory, xl_mem_len=mem_len)
    prompt = random_prompt(2, rows=6)
    config = GenerateConfig(length=50, min_length=50, temperature=0.8, top_k=40, seed=5)
    cached = generate(model, prompt, SCHEME, config).tokens
    assert len(cached) == 50
    assert generate(model, prompt, SCHEME, config, context=Recompute).tokens == cached
    assert recomputed(model, prompt, config, segment_by_segment) == cached


@pytest.mark.parametrize("memory", ["xl", "xl_knn"])
@pytest.mark.parametrize("chunks", [[1], [13, 1, 1, 7, 20, 3]])
def test_cached_logits_equal_segment_by_segment_logits(memory, chunks):
    """Teacher-forced through the cache (a token at a time, or chunks that straddle segment
    ends), the logits of a 9-segment song equal training's forward at every position."""
    model = tiny(memory, xl_mem_len=6)
    prompt = random_prompt(3, rows=40)
    tokens = torch.tensor(prompt.tokens)[None]
    bars = torch.tensor(prompt.bar_pos)[None]
    assert tokens.shape[1] > 9 * 8
    with torch.no_grad():
        expected = segment_by_segment(model, tokens, bars)
        cache, start, sizes = KVCache(model), 0, iter(chunks * tokens.shape[1])
        while start < tokens.shape[1]:
            stop = min(start + next(sizes), tokens.shape[1])
            logits = cache.feed(tokens[:, start:stop], bars[:, start:stop])
            torch.testing.assert_close(logits, expected[:, stop - 1], atol=1e-5, rtol=1e-5)
            start = stop


@pytest.mark.parametrize("memory", MEMORIES)
def test_reordered_rows_keep_their_own_memories(memory):
    """Beam search moves and copies rows: after select([2, 0, 0, 1]) each row continues exactly
    as a cache fed only its own sequence (three segment ends in, kNN rows included)."""
    model = tiny(memory)
    songs = [random_prompt(seed, rows=10) for seed in (10, 11, 12)]
    n = min(len(song.tokens) for song in songs)
    heads = [(torch.tensor(song.tokens[:n]), torch.tensor(song.bar_pos[:n])) for song in songs]
    more = random_prompt(13, rows=4)
    tail, tail_bars = torch.tensor(more.tokens[1:])[None], torch.tensor(more.bar_pos[1:])[None]
    rows = [2, 0, 0, 1]
    with torch.no_grad():
        batch = KVCache(model)
        batch.feed(torch.stack([t for t, _ in heads]), torch.stack([b for _, b in heads]))
        batch.select(torch.tensor(rows))
        for i in range(tail.shape[1]):  # a token at a time, as beam search feeds them
            logits = batch.feed(
                tail[:, i : i + 1].expand(4, -1), tail_bars[:, i : i + 1].expand(4, -1)
            )
        for row, source in enumerate(rows):
            alone = KVCache(model)
            alone.feed(heads[source][0][None], heads[source][1][None])
            expected = alone.feed(tail, tail_bars)
            torch.testing.assert_close(logits[row], expected[0], atol=1e-5, rtol=1e-5)


def lstm() -> MusicLSTM:
    torch.manual_seed(0)
    config = LSTMConfig(vocab_size=len(VOCAB), d_hidden=24, n_layer=2, d_embed=16, dropout=0.0)
    return MusicLSTM(config).eval()


CONTEXTS = {"none": KVCache, "xl": KVCache, "xl_knn": KVCache, "lstm": Carried}


def model_of(kind: str, **overrides):
    return lstm() if kind == "lstm" else tiny(kind, **overrides)


@pytest.mark.parametrize("kind", CONTEXTS)
def test_stacked_caches_continue_each_row_as_alone(kind):
    """Prompts of 4 lengths, each cached alone, then stacked into one batch: fed the same
    continuation a token at a time, past several segment ends that fall at a different step in
    every row (segment_len 8, XL memory 5), each row's logits equal its cache fed alone."""
    model = model_of(kind, xl_mem_len=5)
    prompts = [
        random_prompt(seed, rows=rows) for seed, rows in ((20, 3), (21, 9), (22, 6), (23, 14))
    ]
    assert len({len(p.tokens) % 8 for p in prompts}) > 2  # rows at different phases
    more = random_prompt(24, rows=16)
    tail, tail_bars = torch.tensor(more.tokens[1:])[None], torch.tensor(more.bar_pos[1:])[None]
    assert tail.shape[1] > 3 * 8

    def cache(prompt: Prompt):
        fed = CONTEXTS[kind](model)
        fed.feed(torch.tensor(prompt.tokens)[None], torch.tensor(prompt.bar_pos)[None])
        return fed

    with torch.no_grad():
        batch = CONTEXTS[kind].stack([cache(prompt) for prompt in prompts])
        alone = [cache(prompt) for prompt in prompts]
        for i in range(tail.shape[1]):
            step, bars = tail[:, i : i + 1], tail_bars[:, i : i + 1]
            logits = batch.feed(step.expand(4, -1), bars.expand(4, -1))
            for row, single in enumerate(alone):
                torch.testing.assert_close(
                    logits[row], single.feed(step, bars)[0], atol=1e-5, rtol=1e-5
                )


def ends_sooner(model):
    """A copy of the model that likes <eos> more, so that rows end at different steps."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        if isinstance(model, MusicLSTM):
            model.head.bias[VOCAB.eos] += 2.5
        else:  # the head is tied to the embeddings: move the final norm toward <eos>'s
            model.ln_f.bias += 1.5 * model.tok_emb.weight[VOCAB.eos]
    return model


@pytest.mark.parametrize("kind", CONTEXTS)
def test_a_batch_of_prompts_draws_what_each_prompt_draws_alone(kind):
    """generate_batch over 5 prompts of different lengths (rows leave the batch as they end:
    <eos> allowed from token 12) draws for every prompt the tokens and log-probability that
    generate() draws for it alone with the same seed."""
    model = ends_sooner(model_of(kind, xl_mem_len=5))
    prompts = [random_prompt(seed, rows=rows) for seed, rows in enumerate((2, 8, 5, 11, 4), 30)]
    config = GenerateConfig(length=40, min_length=12, top_p=0.95, seed=7)
    batched = generate_batch(model, prompts, SCHEME, config)
    alone = [generate(model, p, SCHEME, config, seed=7 + k) for k, p in enumerate(prompts)]
    assert [g.tokens for g in batched] == [g.tokens for g in alone]
    for together, single in zip(batched, alone, strict=True):
        assert together.log_prob == pytest.approx(single.log_prob, rel=1e-5)
    lengths = {len(g.tokens) for g in batched}
    assert len(lengths) > 1 and max(lengths) > 16  # rows ended apart, past segment ends


def test_vanilla_cache_is_a_sliding_window_of_segment_len_tokens():
    """With one layer a key depends on its own token only, so vanilla's cache of the last
    segment_len - 1 tokens must be exactly a re-encoded window of segment_len tokens (and not
    one more): past the window, cached generation draws what re-running the window draws."""
    model = tiny("none", n_layer=1)
    length = model.config.segment_len
    song = random_prompt(4, rows=15)
    tokens, bars = torch.tensor(song.tokens)[None], torch.tensor(song.bar_pos)[None]
    cache = KVCache(model)
    with torch.no_grad():
        for p in range(tokens.shape[1]):
            logits = cache.feed(tokens[:, p : p + 1], bars[:, p : p + 1])
            window = slice(max(0, p + 1 - length), p + 1)
            expected = model(tokens[:, window], bars[:, window])[0][:, -1]
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
            if p >= length:
                wider = model(tokens[:, p - length : p + 1], bars[:, p - length : p + 1])[0]
                assert not torch.allclose(logits, wider[:, -1], atol=1e-4)
    config = GenerateConfig(length=40, min_length=40, seed=1)
    cached = generate(model, song, SCHEME, config).tokens
    assert generate(model, song, SCHEME, config, context=Recompute).tokens == cached


# ---- 2. the grammar: every sample decodes ------------------------------------------------------


def completions(vocab: Vocab) -> list[list[int]]:
    """Short endings that make any grammatical prefix a whole song."""
    endings = [[], [vocab.duration(1)], [vocab.note(60), vocab.duration(1)]]
    if vocab.instruments:
        endings.append([vocab.program(0), vocab.note(60), vocab.duration(1)])
    return [[*ending, vocab.eos] for ending in endings]


def decodes(tokens: list[int], vocab: Vocab) -> bool:
    try:
        decode_tokens(tokens, vocab)
    except DecodeError:
        return False
    return True


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    rows=st.integers(0, 8),
    cut=st.integers(0, 2),
    instruments=st.booleans(),
)
def test_the_mask_allows_exactly_the_tokens_that_decode(seed, rows, cut, instruments):
    """After any valid prefix (whole rows, or cut inside a row), a token is allowed iff some
    ending makes the song decode; except that after a program token only a note is (the decoder
    takes anything that may open a row there; the encoder always writes a note)."""
    vocab = Vocab(4, instruments)
    prompt = random_prompt(seed, rows, vocab).tokens.tolist()
    prompt = prompt[: max(1, len(prompt) - cut)]
    grammar = Grammar(vocab)
    cursor = grammar.parse(prompt)
    allowed = grammar.mask(cursor)
    for token in range(len(vocab)):
        ok = any(decodes([*prompt, token, *end], vocab) for end in completions(vocab))
        ok = decodes([*prompt, token], vocab) if token == vocab.eos else ok
        if cursor.expect == NOTE:
            ok = ok and vocab.note_base <= token < vocab.duration_base
        assert bool(allowed[token]) == ok, vocab.names()[token]


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    memory=st.sampled_from(MEMORIES),
    instruments=st.booleans(),
    temperature=st.sampled_from([0.3, 1.0, 3.0]),
    top_k=st.sampled_from([0, 1, 5]),
    top_p=st.sampled_from([0.5, 1.0]),
    min_length=st.integers(0, 12),
    beams=st.sampled_from([1, 1, 3]),
    length=st.integers(1, 60),
)
def test_every_generated_sequence_decodes(
    seed, memory, instruments, temperature, top_k, top_p, min_length, beams, length
):
    """Random models, any sampling settings, beam search too: the drawn tokens follow the
    grammar, and cut back to whole rows they always decode."""
    vocab = Vocab(4, instruments)
    model = tiny(memory, vocab, seed=seed % 3)
    prompt = random_prompt(seed, rows=seed % 7, vocab=vocab)
    config = GenerateConfig(
        length=length,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_length=min_length,
        beams=beams,
        seed=seed,
    )
    drawn = generate(model, prompt, Index(vocab), config).tokens
    assert 1 <= len(drawn) <= length
    assert vocab.eos not in drawn[:-1] and vocab.eos not in drawn[:min_length]
    grammar = Grammar(vocab)
    grammar.parse([*prompt.tokens.tolist(), *drawn])  # raises on a grammar error
    kept = whole_rows(grammar, grammar.parse(prompt.tokens.tolist()), drawn)
    ending = [] if kept[-1:] == [vocab.eos] else [vocab.eos]
    decode_tokens([*prompt.tokens.tolist(), *kept, *ending], vocab)


def test_whole_rows_drops_only_an_unfinished_row():
    v = Vocab(4, instruments=True)
    grammar = Grammar(v)
    start = grammar.parse([v.sos])
    row = [v.program(1), v.note(60), v.duration(2)]
    assert whole_rows(grammar, start, [*row, v.program(3), v.note(62)]) == row
    assert whole_rows(grammar, start, [*row, v.note(61)]) == row
    assert whole_rows(grammar, start, [*row, v.sep]) == row
    ended = [*row, v.sep, v.duration(1), v.eos]
    assert whole_rows(grammar, start, ended) == ended
    assert whole_rows(grammar, start, [v.program(1), v.note(60)]) == []
    with pytest.raises(DecodeError):  # only what the grammar allows
        whole_rows(grammar, start, [v.note(60)])


def test_grammar_counts_the_steps_the_encoder_wrote(chorales):
    """On every test chorale, the step the grammar tracks for each token (a <sep><dD> row moves
    time on by D) is the step stored in the shard, and bar positions follow the inferred bar."""
    shard, scheme = load_shard(chorales[0], "test"), load_scheme(chorales[0])
    grammar = scheme.grammar
    for song in range(len(shard.songs)):
        span = shard.song(song)
        tokens, times = shard.tokens[span].tolist(), shard.times[span]
        cursor, steps = grammar.start(), [0]
        for token in tokens[1:]:
            steps.append(cursor.step)
            cursor = grammar.advance(cursor, token)
        assert steps == times.tolist()
        bar_steps = bar_steps_of(times, shard.bar_pos[span], 4)
        assert bar_steps in (12, 16)
        np.testing.assert_array_equal(shard.bar_pos[span], times % bar_steps)


# ---- 3. sampling controls ------------------------------------------------------------------------


def draws(logits: torch.Tensor, allowed: torch.Tensor, n: int = 20000, **config) -> np.ndarray:
    """n independent draws from one row of logits (as n rows of one batch, each with its own
    generator); the controls not given are off."""
    generators = [torch.Generator().manual_seed(seed) for seed in range(n)]
    config = GenerateConfig(**{"top_p": 1.0, "top_k": 0, "temperature": 1.0, **config})
    rows = sample(logits.expand(n, -1), allowed.expand(n, -1), config, generators)
    return rows.numpy()


def test_top_k_draws_only_the_k_best_allowed_tokens():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(1))
    allowed = torch.rand(1, 50, generator=torch.Generator().manual_seed(2)) < 0.5
    best = set(logits.masked_fill(~allowed, float("-inf")).topk(4).indices[0].tolist())
    assert set(draws(logits, allowed, top_k=4)) == best


def test_top_p_draws_from_the_smallest_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    drawn = draws(probs.log(), torch.ones_like(probs, dtype=torch.bool), top_p=0.75)
    assert set(drawn) == {1, 3}  # 0.5 < 0.75 <= 0.5 + 0.3
    assert abs((drawn == 1).mean() - 0.5 / 0.8) < 0.02
    assert set(draws(probs.log(), torch.ones_like(probs, dtype=torch.bool), top_p=0.01)) == {1}


@pytest.mark.parametrize("temperature", [0.5, 2.0, 100.0])
def test_temperature_reshapes_the_allowed_distribution(temperature):
    logits = torch.randn(1, 12, generator=torch.Generator().manual_seed(3)) * 2
    allowed = torch.tensor([[True, False] * 6])
    drawn = draws(logits, allowed, temperature=temperature)
    expected = (logits / temperature).masked_fill(~allowed, float("-inf")).softmax(-1)[0]
    frequency = np.bincount(drawn, minlength=12) / len(drawn)
    assert not frequency[~allowed[0].numpy()].any()
    np.testing.assert_allclose(frequency, expected.numpy(), atol=0.015)


def eos_lover() -> MusicTransformer:
    """A model that wants to end at once: <eos> beats every other token by 30 nats."""
    model = MusicTransformer(tiny("xl").config).eval()  # its weights do not matter here
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.zero_()
        model.ln_f.bias[0] = 1.0
        model.tok_emb.weight[:, 0] = 0.0
        model.tok_emb.weight[VOCAB.eos, 0] = 30.0
    return model


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("min_length", [0, 5, 6, 17])
def test_no_eos_before_min_length(min_length, beams):
    """The piece ends at the first row boundary at or after min_length, not a token before."""
    prompt = random_prompt(5, rows=3)
    config = GenerateConfig(length=40, min_length=min_length, beams=beams)
    drawn = generate(eos_lover(), prompt, SCHEME, config).tokens
    assert drawn[-1] == VOCAB.eos and VOCAB.eos not in drawn[:-1]
    assert len(drawn) - 1 == min_length + min_length % 2  # rows are two tokens long


def test_a_seed_fixes_the_sample():
    model, prompt = tiny("xl_knn"), random_prompt(6, rows=4)
    config = GenerateConfig(length=30, min_length=30)
    first = generate(model, prompt, SCHEME, config, seed=1).tokens
    assert generate(model, prompt, SCHEME, config, seed=1).tokens == first
    assert generate(model, prompt, SCHEME, config, seed=2).tokens != first


def test_zero_length_draws_nothing():
    generation = generate(tiny("xl"), random_prompt(6, rows=4), SCHEME, GenerateConfig(length=0))
    assert generation.tokens == [] and generation.log_prob == 0.0


@pytest.mark.parametrize("memory", MEMORIES)
def test_sampled_log_prob_is_the_models(memory):
    """(Within one segment, where vanilla's window is training's context too.)"""
    model, prompt = tiny(memory, segment_len=48, xl_mem_len=48), random_prompt(7, rows=4)
    config = GenerateConfig(length=30, min_length=10, top_p=0.9, seed=4)
    generation = generate(model, prompt, SCHEME, config)
    expected = score(model, prompt, generation.tokens, min_length=10)
    assert generation.log_prob == pytest.approx(expected, rel=1e-6)


# ---- 4. beam search ------------------------------------------------------------------------------


@pytest.mark.parametrize("memory", ["none", "xl_knn"])
def test_beam_search_finds_the_most_likely_continuation(memory):
    """Three tokens with enough beams to keep every hypothesis: beam search must return the
    best of all grammatical continuations, scored by brute force through training's forward
    (for xl_knn the prompt spans two segments, so both memories are in play; vanilla stays in
    one segment, where its window is training's context)."""
    vocab = Vocab(max_duration=2)
    model = tiny(memory, vocab, segment_len=8 if memory == "xl_knn" else 32)
    prompt = random_prompt(8, rows=6, vocab=vocab)
    grammar = Grammar(vocab)
    cursor = grammar.parse(prompt.tokens.tolist())
    firsts = np.flatnonzero(grammar.mask(cursor)).tolist()
    pairs = [
        (x, d) for x in firsts if x != vocab.eos for d in (vocab.duration(1), vocab.duration(2))
    ]
    n, bar = len(prompt.tokens), prompt.bar_position(cursor.step)  # x and d sound at one step
    tokens = torch.tensor([[*prompt.tokens.tolist(), x, d] for x, d in pairs])
    bars = torch.tensor([[*prompt.bar_pos.tolist(), bar, bar]] * len(pairs))
    with torch.no_grad():
        logits = segment_by_segment(model, tokens, bars).double()

    def log_probs(row: int, position: int, after) -> torch.Tensor:
        allowed = torch.as_tensor(grammar.mask(after))
        return F.log_softmax(logits[row, position].masked_fill(~allowed, float("-inf")), dim=-1)

    first = log_probs(0, n - 1, cursor)
    best = (float(first[vocab.eos]), [vocab.eos])
    for row, (x, d) in enumerate(pairs):
        second = log_probs(row, n, grammar.advance(cursor, x))
        third = log_probs(row, n + 1, grammar.advance(grammar.advance(cursor, x), d))
        y = int(third.argmax())
        best = max(best, (float(first[x] + second[d] + third[y]), [x, d, y]))
    config = GenerateConfig(length=3, beams=len(pairs), min_length=0)  # <eos> may come first
    generation = generate(model, prompt, Index(vocab), config)
    assert generation.tokens == best[1]
    assert generation.log_prob == pytest.approx(best[0], rel=1e-6)


@pytest.mark.parametrize("memory", ["xl", "xl_knn"])
def test_beam_memories_follow_their_hypotheses(memory):
    """Beams reordered for 40 tokens (five segment ends): the winner's score equals its
    log-probability recomputed from scratch, so every row's memories stayed its own."""
    model, prompt = tiny(memory), random_prompt(9, rows=5)
    config = GenerateConfig(length=40, min_length=40, beams=4)
    generation = generate(model, prompt, SCHEME, config)
    assert len(generation.tokens) == 40
    expected = score(model, prompt, generation.tokens, min_length=40)
    assert generation.log_prob == pytest.approx(expected, rel=1e-6)
    greedy = generate(model, prompt, SCHEME, dataclasses.replace(config, beams=1, top_k=1))
    # greedy's sequence is among those beam search weighs (to float32 rounding: batch 4 vs 1)
    assert generation.log_prob >= greedy.log_prob - 1e-6 * abs(greedy.log_prob)


# ---- 5. the stage on real chorales ---------------------------------------------------------------


@pytest.fixture(scope="module")
def chorale_model(tmp_path_factory, chorales) -> Path:
    """A tiny xl_knn model for the chorale vocabulary, saved the way training saves one."""
    config = ModelConfig(
        vocab_size=load_scheme(chorales[0]).fields[0], **TINY_MODEL, memory="xl_knn"
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    state = MusicTransformer(config).state_dict()
    torch.save({"model": state, "model_config": dataclasses.asdict(config)}, path)
    return path


def stage_params(**generate) -> dict:
    params = load_params(ROOT / "params.yaml")
    params["generate"].update({"prompts": 2, "prompt_bars": 2, "length": 60, "min_length": 20})
    params["generate"].update(generate)
    return params


def run_stage(
    chorales: tuple[Path, Path], model: Path, out: Path, variant: str = "xl_knn", **generate
) -> str:
    shards, raw = chorales
    args = argparse.Namespace(
        variant=variant, scheme="index", shards=shards, raw=raw, model=model, out=out
    )
    return stage.run(args, stage_params(**generate))


def test_stage_writes_decodable_pieces_that_open_with_the_song(chorales, chorale_model, tmp_path):
    out = tmp_path / "samples" / "xl_knn"
    summary = run_stage(chorales, chorale_model, out)
    shards, raw = chorales
    assert "2 continuations" in summary
    samples = json.loads((out / "samples.json").read_text())
    shard, scheme = load_shard(shards, "test"), load_scheme(shards)
    files = {row["sha256"]: raw / row["path"] for row in read_manifest(raw / "manifest.csv")}
    encode = EncodeConfig.from_params(load_params(ROOT / "params.yaml")["encode"])
    assert samples["variant"] == "xl_knn" and samples["steps_per_beat"] == 4
    assert [p["song"] for p in samples["prompts"]] == [s["sha256"] for s in shard.songs[:2]]
    for k, entry in enumerate(samples["prompts"]):
        song = shard.tokens[shard.song(k)].tolist()
        tokens = entry["tokens"]
        assert tokens["prompt"] + tokens["real"] == song
        assert entry["prompt_steps"] >= 2 * entry["bar_steps"] == 2 * 16
        # the chorales' first track plays the soprano part: its name is no title, the source is
        assert entry["title"] == shard.songs[k]["source"]
        assert len(tokens["generated"]) <= 60
        opening = encode.read(files[entry["song"]].read_bytes()).notes
        for piece in ("prompt", "real", "generated"):
            names = entry["files"][piece]
            assert (out / names["png"]).stat().st_size > 0
            assert names["wav"] is None if samples["renderer"] else (out / names["wav"]).exists()
            notes = encode.read((out / names["mid"]).read_bytes()).notes
            head = notes.onset < entry["prompt_steps"]
            first = opening.onset < entry["prompt_steps"]
            for field in ("onset", "pitch"):  # the song's first bars open every piece
                np.testing.assert_array_equal(
                    getattr(notes, field)[head], getattr(opening, field)[first]
                )
            # (a generated note may restrike a key the prompt still holds, which ends it early)
            assert (notes.duration[head] <= opening.duration[first]).all()
            if piece != "generated":
                np.testing.assert_array_equal(notes.duration[head], opening.duration[first])
            if piece == "real":
                assert notes.equals(opening)
        piece = [*tokens["prompt"], *tokens["generated"]]
        decode_song(scheme, piece)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompts": 99}, "generate.prompts is 99 but the test split has only"),
        ({"model": "missing.pt"}, "model not found"),
        ({"variant": "xl"}, "not the xl variant"),
        ({"variant": "big"}, "unknown variant 'big'"),
    ],
)
def test_bad_input_is_one_clear_error(chorales, chorale_model, tmp_path, change, message):
    model = tmp_path / change.pop("model") if "model" in change else chorale_model
    variant = change.pop("variant", "xl_knn")
    with pytest.raises(MidigenError, match=message):
        run_stage(chorales, model, tmp_path / "out", variant, **change)
    assert not (tmp_path / "out").exists()


def test_split_song_cuts_whole_rows_at_a_bar_line(chorales):
    shard = load_shard(chorales[0], "test")
    for song in range(len(shard.songs)):
        span = shard.song(song)
        tokens, times, bars = shard.tokens[span], shard.times[span], shard.bar_pos[span]
        prompt, real = split_song(tokens, times, bars, 3, 4)
        n = len(prompt.tokens)
        np.testing.assert_array_equal(np.concatenate([prompt.tokens, real]), tokens)
        assert times[n - 1] < 3 * prompt.bar_steps <= times[n]
        assert prompt.bar_position(int(times[n])) == bars[n]
        assert load_scheme(chorales[0]).grammar.parse(prompt.tokens.tolist()).expect == "row"


@pytest.mark.parametrize("chunks", [[1], [200], [13, 1, 7, 20, 3]])
def test_vanilla_reads_a_long_prompt_in_chunks_as_it_would_token_by_token(chunks):
    """Issue 27: vanilla read a long prompt one token per forward. Read in chunks of any size
    (a whole multi-segment prompt at once), each query seeing only its own window of
    segment_len tokens, the cache gives the logits feeding one token at a time gives, at the
    end of every chunk (two layers: keys carry their own windows' context)."""
    model = tiny("none", n_layer=2)
    song = random_prompt(5, rows=30)
    tokens, bars = torch.tensor(song.tokens)[None], torch.tensor(song.bar_pos)[None]
    assert tokens.shape[1] > 4 * model.config.segment_len
    with torch.no_grad():
        one = KVCache(model)
        expected = [
            one.feed(tokens[:, p : p + 1], bars[:, p : p + 1]) for p in range(tokens.shape[1])
        ]
        cache, start, sizes = KVCache(model), 0, iter(chunks * tokens.shape[1])
        while start < tokens.shape[1]:
            stop = min(start + next(sizes), tokens.shape[1])
            logits = cache.feed(tokens[:, start:stop], bars[:, start:stop])
            torch.testing.assert_close(logits, expected[stop - 1], atol=1e-5, rtol=1e-5)
            start = stop


def test_a_piece_is_titled_by_its_conductor_track_else_by_its_source(tmp_path):
    """SMF: the name of a type-1 file's first track names the sequence when that track plays
    nothing; a first track with notes is named after its part, so the source names the piece."""
    named = mido.MidiFile(type=1)
    named.tracks.append(mido.MidiTrack([mido.MetaMessage("track_name", name="Air on G")]))
    part = mido.MidiTrack([mido.MetaMessage("track_name", name="Soprano")])
    part += [
        mido.Message("note_on", note=60, velocity=64),
        mido.Message("note_off", note=60, time=96),
    ]
    named.tracks.append(part)
    named.save(tmp_path / "named.mid")
    assert song_title(tmp_path / "named.mid", "bach/air") == "Air on G"
    named.tracks.pop(0)  # now the part's track comes first
    named.save(tmp_path / "parts.mid")
    assert song_title(tmp_path / "parts.mid", "bach/air") == "bach/air"
    (tmp_path / "bad.mid").write_bytes(b"MThd")
    assert song_title(tmp_path / "bad.mid", "bach/air") == "bach/air"
