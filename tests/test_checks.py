"""The field's generation checks (copying, looping, ending) and bits per second, on hand-made
sequences whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from midigen.encodings import row_ids
from midigen.encodings.codebook import Codebook
from midigen.encodings.index import Index
from midigen.encodings.scores import Vocab
from midigen.evaluation import checks
from midigen.evaluation.checks import TrainingIndex, suffix_array
from midigen.midi.files import Notes, seconds_at


def brute_longest(songs: list[list[int]], query: list[int], start: int) -> int:
    """The longest query[start:start+L] found inside one song, by trying every place."""
    best = 0
    for song in songs:
        for length in range(1, len(query) - start + 1):
            piece = query[start : start + length]
            if any(song[j : j + length] == piece for j in range(len(song) - length + 1)):
                best = max(best, length)
    return best


@settings(max_examples=150, deadline=None)
@given(
    songs=st.lists(st.lists(st.integers(0, 2), max_size=12), min_size=1, max_size=4),
    query=st.lists(st.integers(0, 2), max_size=10),
)
def test_longest_matches_agree_with_trying_every_place(songs, query):
    index = TrainingIndex([np.array(s, dtype=np.int64) for s in songs])
    text = index.text.tolist()
    assert index.suffixes.tolist() == sorted(range(len(text)), key=lambda i: text[i:])
    found = index.longest_matches(np.array(query, dtype=np.int64)).tolist()
    assert found == [brute_longest(songs, query, i) for i in range(len(query))]


def test_a_match_never_runs_across_two_songs():
    """[1 2] ends one song and [3 4] opens the next: [2 3] is in neither."""
    index = TrainingIndex([np.array([1, 2]), np.array([3, 4])])
    assert index.longest_matches(np.array([1, 2, 3, 4])).tolist() == [2, 1, 2, 1]


def test_suffix_array_of_a_run_of_one_token():
    """Equal tokens: the suffixes sort shortest first (only their lengths tell them apart)."""
    assert suffix_array(np.array([5, 5, 5, 5])).tolist() == [3, 2, 1, 0]


def test_copied_span_and_windows_by_hand():
    """Training holds tokens 10..29; the continuation copies 10..19 whole, then strays. With
    one token per bar, the two 8-bar windows from bars 0 and 1 are copied, the rest not."""
    index = TrainingIndex([np.arange(10, 30)])
    tokens = np.array([*range(10, 20), 99, 98, 97, 96, 95])
    starts = checks.bar_starts(np.arange(15), start=0, bar_steps=1)
    result = checks.copying(index, tokens, starts)
    assert result["copied_span"] == 10
    # windows start at bars 0..7 (15 bars, the last window ends at the end): bars 0..2 fit in
    # 10..19 (8 tokens from 0, 1, 2), from bar 3 on they take a stray token
    assert result["copied_windows"] == pytest.approx(3 / 8)
    short = checks.copying(index, tokens[:5], checks.bar_starts(np.arange(5), 0, 1))
    assert short["copied_span"] == 5 and math.isnan(short["copied_windows"])


def test_bar_starts_skip_empty_bars():
    """Tokens at steps 0, 0, 5, 9 on 4-step bars: bar 1 (steps 4-7) starts at the token of
    step 5, bar 2 has no token and starts where bar 3's first token is."""
    assert checks.bar_starts(np.array([0, 0, 5, 13]), 0, 4).tolist() == [0, 2, 3, 3, 4]


def notes(*onset_pitch: tuple[int, int]) -> Notes:
    onset, pitch = (np.array(column, dtype=np.int64) for column in zip(*onset_pitch, strict=True))
    return Notes(onset, np.zeros_like(onset), pitch, np.ones_like(onset))


def test_bar_similarity_and_loops_by_hand():
    """Bars of 4 steps from step 8: A A A A (a loop), then B; A = {(0, 60), (2, 64)},
    B = {(0, 60), (2, 67)} (Jaccard with A: 1/3)."""
    a, b = [(0, 60), (2, 64)], [(0, 60), (2, 67)]
    bars = [a, a, a, a, b]
    played = notes(*[(8 + 4 * i + at, p) for i, bar in enumerate(bars) for at, p in bar])
    result = checks.looping(played, start=8, bar_steps=4)
    # distance 1: 3 pairs A-A (1) and one A-B (1/3); distance 2: A-A twice, A-B once
    assert result["bar_similarity_1"] == pytest.approx((3 + 1 / 3) / 4)
    assert result["bar_similarity_2"] == pytest.approx((2 + 1 / 3) / 3)
    assert result["bar_similarity_4"] == pytest.approx(1 / 3)
    assert math.isnan(result["bar_similarity_8"])  # no bars 8 apart
    assert result["loops"] == 1.0
    three = checks.looping(
        notes(*[(4 * i + at, p) for i in range(3) for at, p in a], (12, 67)), 0, 4
    )
    assert three["loops"] == 0.0  # A three times, then something else: not a loop
    empty_bars = checks.looping(notes((0, 60), (20, 60)), 0, 4)  # 4 silent bars between
    assert empty_bars["loops"] == 0.0 and empty_bars["bar_similarity_1"] == 0.0


def test_ending_within_the_length_limit():
    vocab = Vocab(8)
    scheme = Index(vocab)
    prompt = vocab.from_text("<sos><n60><d4><sep><d4>").tolist()
    ended = vocab.from_text("<n62><d2><sep><d2><eos>").tolist()
    assert checks.ends(scheme, prompt, ended, length=5) == 1.0
    assert checks.ends(scheme, prompt, ended, length=4) == 0.0  # <eos> is the 5th token
    assert checks.ends(scheme, prompt, ended[:2], length=512) == 0.0


def test_token_steps_follow_the_grammar():
    """Index score: every token sounds at the step the cursor is at; a time shift <sep><dN>
    too (where the shift starts), and moves it on by N for the tokens after it."""
    vocab = Vocab(8)
    scheme = Index(vocab)
    prompt = vocab.from_text("<sos><n60><d4><sep><d4>").tolist()
    body = vocab.from_text("<n62><d2><sep><d2><n64><d1>").tolist()
    assert checks.token_steps(scheme, prompt, body).tolist() == [4, 4, 4, 4, 6, 6]


def test_codebook_rows_are_matched_whole():
    """Two rows that share a field are different tokens to the copy check."""
    scheme = Codebook(steps=(0, 1, 2, 4, 8), durations=(1, 2, 4, 8))
    rows = np.asarray(scheme.encode(notes((0, 60), (4, 62), (8, 64))).stored)
    assert rows.ndim == 2 and len(rows) >= 5
    index = TrainingIndex([row_ids(rows, scheme.fields)])
    changed = rows.copy()
    changed[2, -1] = (changed[2, -1] + 1) % scheme.fields[-1]  # one field of one row
    longest = index.longest_matches(row_ids(changed, scheme.fields))
    assert longest[0] == 2 and longest[3] == len(rows) - 3


def test_seconds_follow_the_tempo_map():
    """4 steps per beat: 2 beats at MIDI's default 120 bpm, then 2 at 60 bpm: 1 s + 2 s."""
    assert seconds_at(np.zeros((0, 2)), 16, 4) == 2.0
    assert seconds_at(np.array([[8, 60.0]]), 16, 4) == 3.0
    assert seconds_at(np.array([[0, 60.0], [8, 120.0], [32, 30.0]]), 16, 4) == 3.0
