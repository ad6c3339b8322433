"""Baselines: Kneser-Ney probabilities worked out by hand, normalisation, and the stage."""

from __future__ import annotations

import argparse
import csv
import json
import math
from fractions import Fraction as F
from pathlib import Path

import numpy as np
import pytest
from builders import shards_from_songs
from hypothesis import given, settings
from hypothesis import strategies as st

from midigen.data.corpus import load_shard
from midigen.encodings.catalog import load_scheme
from midigen.errors import MidigenError
from midigen.evaluation.baselines import NGramModel, evaluate_baselines
from midigen.midi.files import Notes
from midigen.params import validate_params
from midigen.stages import baselines as stage

# Toy corpus over 6 token ids (1 = <sos>, 2 = <eos>).
V = 6
SONGS = [np.array(s) for s in ([1, 4, 5, 4, 2], [1, 4, 5, 5, 2], [1, 5, 4, 2])]

# Order 3, counted by hand.
# Trigrams (highest order: raw counts): (1,4,5) 2, (5,4,2) 2, (4,5,4) 1, (4,5,5) 1, (5,5,2) 1,
# (1,5,4) 1 -> n1 = 4, n2 = 2, D3 = 4 / (4 + 2*2) = 1/2.
D3 = F(1, 2)
# Bigrams (continuation counts = distinct left neighbours; at a song start, each occurrence):
# (1,4) 2 starts, (1,5) 1 start, (4,5) left {1}: 1, (5,4) left {4,1}: 2, (4,2) left {5}: 1
# (raw count 2), (5,5) {4}: 1, (5,2) {5}: 1 -> n1 = 5, n2 = 2, D2 = 5/9.
D2 = F(5, 9)
# Unigrams (continuation): 4 left {1,5}: 2, 5 left {4,5,1}: 3, 2 left {4,5}: 2, total 7, 3 types
# -> n1 = 0: D1 falls back to 1/2.
D1 = F(1, 2)


def p1(w: int) -> F:
    count = {4: 2, 5: 3, 2: 2}.get(w, 0)
    return max(count - D1, F(0)) / 7 + D1 * 3 / 7 * F(1, V)


def p2(w: int, h: int) -> F:
    counts = {1: {4: 2, 5: 1}, 4: {5: 1, 2: 1}, 5: {4: 2, 5: 1, 2: 1}}[h]
    total = sum(counts.values())
    return max(counts.get(w, 0) - D2, F(0)) / total + D2 * len(counts) / total * p1(w)


def p3(w: int, h: tuple[int, int]) -> F:
    counts = {(1, 4): {5: 2}, (4, 5): {4: 1, 5: 1}, (5, 4): {2: 2}}[h]
    total = sum(counts.values())
    return max(counts.get(w, 0) - D3, F(0)) / total + D3 * len(counts) / total * p2(w, h[1])


@pytest.fixture(scope="module")
def trigram() -> NGramModel:
    return NGramModel(3, V).fit(SONGS)


def test_kneser_ney_probabilities_match_the_hand_computation(trigram):
    assert trigram.discounts == pytest.approx([float(D1), float(D2), float(D3)])
    assert p1(4) == F(1, 4) and p1(0) == F(1, 28)  # the hand formulas, checked once more
    for context in [(1, 4), (4, 5), (5, 4)]:
        expected = [float(p3(w, context)) for w in range(V)]
        assert trigram.distribution(context) == pytest.approx(expected, rel=1e-12)
    # after <sos> only a bigram context exists; an unseen context backs off to lower orders
    assert trigram.distribution([1]) == pytest.approx([float(p2(w, 1)) for w in range(V)])
    assert trigram.distribution([3, 5]) == pytest.approx([float(p2(w, 5)) for w in range(V)])
    assert trigram.distribution([3, 3]) == pytest.approx([float(p1(w)) for w in range(V)])
    assert trigram.distribution([0, 3, 1, 4]) == pytest.approx(trigram.distribution([1, 4]))


def test_song_nll_uses_contexts_that_restart_at_the_song(trigram):
    song = SONGS[0]  # 1 4 5 4 2
    expected = [p2(4, 1), p3(5, (1, 4)), p3(4, (4, 5)), p3(2, (5, 4))]
    assert trigram.song_nll(song) == pytest.approx([-math.log(p) for p in expected], rel=1e-12)
    scores = trigram.scores(SONGS)
    assert scores.position.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]
    assert scores.song.tolist() == [0] * 4 + [1] * 4 + [2] * 3
    assert scores.target.tolist() == [4, 5, 4, 2, 4, 5, 5, 2, 5, 4, 2]


def test_contexts_shorter_than_the_order_keep_all_their_tokens():
    """In a 4-gram model, <sos> 4 is a whole context (nothing precedes <sos>). Its trigram
    counts are song-start occurrences, which keep their raw counts, and the order-3 counts of
    a 4-gram model give the same D3 = 1/2 (n1 = 4, n2 = 2 as above), so P matches p3."""
    fourgram = NGramModel(4, V).fit(SONGS)
    assert fourgram.discounts[:3] == pytest.approx([float(D1), float(D2), float(D3)])
    expected = [float(p3(w, (1, 4))) for w in range(V)]
    assert fourgram.distribution([1, 4]) == pytest.approx(expected, rel=1e-12)
    assert fourgram.song_nll(SONGS[0])[1] == pytest.approx(-math.log(p3(5, (1, 4))))


def test_unigram_is_discounted_towards_uniform():
    unigram = NGramModel(1, V).fit(SONGS)
    # raw target counts 4: 4, 5: 4, 2: 3 (no count of 1: D falls back to 1/2), total 11
    counts = {4: 4, 5: 4, 2: 3}
    expected = [(max(counts.get(w, 0) - 0.5, 0) + 0.5 * 3 / V) / 11 for w in range(V)]
    assert unigram.distribution([]) == pytest.approx(expected)
    assert unigram.distribution([4, 5, 4]) == pytest.approx(expected)  # context is ignored


def test_unigram_nll_is_the_entropy_of_the_token_frequencies():
    """Fit and scored on the same long corpus, a unigram's NLL is the entropy of its targets'
    frequencies, plus the little that discounting moves to unseen tokens (cross entropy >=
    entropy)."""
    rng = np.random.default_rng(0)
    probs = np.array([0.5, 0.25, 0.125, 0.125])  # entropy 1.75 bits
    songs = [np.concatenate([[1], 2 + rng.choice(4, 2000, p=probs)]) for _ in range(5)]
    targets = np.concatenate([s[1:] for s in songs])
    frequencies = np.bincount(targets) / len(targets)
    frequencies = frequencies[frequencies > 0]
    entropy = -(frequencies * np.log(frequencies)).sum()
    assert entropy / math.log(2) == pytest.approx(1.75, abs=0.01)
    nll = NGramModel(1, V).fit(songs).scores(songs).nll.mean()
    assert entropy <= nll <= entropy + 1e-3


@pytest.fixture(scope="module")
def random_model() -> NGramModel:
    rng = np.random.default_rng(1)
    songs = [
        np.concatenate([[1], rng.integers(3, 20, rng.integers(1, 40)), [2]]) for _ in range(30)
    ]
    return NGramModel(4, 24).fit(songs)


@settings(max_examples=200, deadline=None)
@given(context=st.lists(st.integers(0, 23), max_size=6))
def test_probabilities_sum_to_one_for_any_context(random_model, context):
    p = random_model.distribution(context)
    assert p.shape == (24,)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert (p > 0).all()


def test_unfitted_or_orderless_models_are_refused():
    with pytest.raises(ValueError) as error:
        NGramModel(0, V)
    assert str(error.value) == "n-gram order must be at least 1 (got 0)"
    with pytest.raises(RuntimeError) as error:
        NGramModel(2, V).distribution([1])
    assert str(error.value) == "fit the n-gram model before asking for probabilities"


def test_the_shortest_songs_count_and_a_one_token_song_is_skipped():
    """Songs [3] (no target: skipped) then [1, 2]: one bigram <1 2> and one continuation count
    for 2, each seen once, so n1 = 1, n2 = 0 and D = 1 at both orders; by hand
    P_1(w) = max(c - 1, 0) / 1 + 1 * 1 / 1 * 1/4 = 1/4 and P_2(w | 1) = 0 + 1 * P_1(w)."""
    model = NGramModel(2, 4).fit([np.array([3]), np.array([1, 2])])
    assert list(model.tables[1]) == [(1,)]
    tokens, counts = model.tables[1][(1,)]
    assert tokens.tolist() == [2] and counts.tolist() == [1.0]
    assert model.discounts == [1.0, 1.0]
    np.testing.assert_allclose(model.distribution([]), [0.25] * 4)
    np.testing.assert_allclose(model.distribution([1]), [0.25] * 4)


def test_songs_too_short_for_any_gram_leave_every_order_uniform():
    model = NGramModel(3, 5).fit([np.array([4]), np.array([2])])
    assert model.tables == [{}, {}, {}]
    for context in ([], [2], [4, 2]):
        np.testing.assert_allclose(model.distribution(context), np.full(5, 0.2))


# ---- the stage on real shards --------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Real shards made by the real stages from small random songs."""
    rng = np.random.default_rng(0)
    songs = []
    for _ in range(16):
        n = int(rng.integers(30, 80))
        onset = np.sort(rng.choice(4 * n, n, replace=False))
        songs.append(
            Notes(onset, np.zeros(n, np.int64), rng.integers(55, 75, n), rng.integers(1, 5, n))
        )
    return shards_from_songs(tmp_path_factory.mktemp("baselines"), songs, test_fraction=0.3)


def test_stage_writes_metrics_and_plot_data(shards, tmp_path):
    params = validate_params(
        {"evaluate": {"ngram_order": 3, "position_buckets": [0, 16, 64]}}, partial=True
    )
    args = argparse.Namespace(
        scheme="index", shards=shards, out=tmp_path / "m.json", plots=tmp_path / "plots"
    )
    summary = stage.run(args, params)
    assert "unigram" in summary and "3-gram" in summary
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert list(metrics) == ["unigram", "2-gram", "3-gram"]
    assert [m["order"] for m in metrics.values()] == [1, 2, 3]
    for name, model in metrics.items():
        assert model["perplexity"] == pytest.approx(math.exp(model["nll"]))
        assert list(model["nll_by_position"]) == ["0-15", "16-63", "64+"], name
    with open(tmp_path / "plots" / "nll_by_position.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["bucket"] for r in rows] == ["0-15", "16-63", "64+"]
    assert float(rows[1]["3-gram"]) == pytest.approx(metrics["3-gram"]["nll_by_position"]["16-63"])

    # the buckets partition the targets: their weighted mean is the overall NLL. The weights
    # and the note count come from the shard alone: a song of L tokens has L - 1 targets, at
    # positions 0..L-2.
    test = load_shard(shards, "test")
    lengths = np.diff(test.offsets)
    weights = [
        sum(max(0, min(b, n - 1) - a) for n in lengths) for a, b in [(0, 16), (16, 64), (64, 10**9)]
    ]
    assert sum(weights) == sum(lengths - 1)
    by_bucket = metrics["3-gram"]["nll_by_position"].values()
    assert np.average(list(by_bucket), weights=weights) == pytest.approx(metrics["3-gram"]["nll"])
    notes = sum(int(s["notes"]) for s in test.songs)
    nats = metrics["3-gram"]["nll"] * sum(lengths - 1)
    assert metrics["3-gram"]["bits_per_note"] == pytest.approx(nats / math.log(2) / notes)


def test_bad_buckets_are_one_clear_error(shards):
    train, test = load_shard(shards, "train"), load_shard(shards, "test")
    with pytest.raises(MidigenError, match="position_buckets must start at 0 and increase"):
        evaluate_baselines(train, test, load_scheme(shards), 2, [0, 64, 32])


def test_the_stage_fits_on_the_training_split_alone(shards, tmp_path):
    """Issue 30: a fit on train + test passed every test. The stage's NLL of every order is
    that of a model fit on the training songs alone and scored on the test songs, and a fit
    that has seen the test songs scores them measurably better (so a leak would show)."""
    params = validate_params(
        {"evaluate": {"ngram_order": 3, "position_buckets": [0, 16]}}, partial=True
    )
    args = argparse.Namespace(
        scheme="index", shards=shards, out=tmp_path / "m.json", plots=tmp_path / "plots"
    )
    stage.run(args, params)
    metrics = json.loads((tmp_path / "m.json").read_text())
    train, test = (
        [np.asarray(s.tokens[s.song(i)], np.int64) for i in range(len(s.songs))]
        for s in (load_shard(shards, "train"), load_shard(shards, "test"))
    )
    vocab = load_scheme(shards).fields[0]
    for order, name in enumerate(("unigram", "2-gram", "3-gram"), start=1):
        alone = NGramModel(order, vocab).fit(train).scores(test).nll.mean()
        leaked = NGramModel(order, vocab).fit(train + test).scores(test).nll.mean()
        assert metrics[name]["nll"] == pytest.approx(alone, rel=1e-12), name
        assert leaked < alone, name
