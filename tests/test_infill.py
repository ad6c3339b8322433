"""Filling in bars (issue 29): a song arranged as prefix, suffix, middle comes back as the same
notes, in every one-field scheme, on real chorales; the bar grid the parts are placed on is
the song's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import shards_via_stages

from midigen.data.bars import BarGrid
from midigen.data.corpus import Shard, load_shard
from midigen.data.infill import Span, arrange, restore
from midigen.encodings.catalog import load_scheme
from midigen.errors import MidigenError

FLAT = ("index", "bpe", "events")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    """Six bundled chorales through the real stages, once per scheme."""
    found = {}
    for scheme in (*FLAT, "codebook"):
        root = tmp_path_factory.mktemp(scheme)
        encode = {"bpe": {"merges": 32}}
        found[scheme] = shards_via_stages(
            root, encode, scheme, source="bach", max_files=6, val_fraction=0.0, test_fraction=0.0
        )
    return found


def songs(shard: Shard):
    """(tokens, times, bar positions, bar grid) of every song."""
    for i in range(len(shard.songs)):
        span = shard.song(i)
        times, bar_pos = np.asarray(shard.times[span]), np.asarray(shard.bar_pos[span])
        grid = BarGrid.of(times, bar_pos, steps_per_beat=4)
        yield np.asarray(shard.tokens[span]), times, bar_pos, grid


@pytest.mark.parametrize("scheme_name", FLAT)
def test_an_arranged_song_restores_to_its_notes(shards, scheme_name):
    """Spans at the start (no prefix), inside, at the end (no suffix) and past the end."""
    scheme, shard = load_scheme(shards[scheme_name]), load_shard(shards[scheme_name], "train")
    vocab = scheme.fields[0]
    for tokens, _, _, grid in songs(shard):
        notes, bars = scheme.decode(tokens), len(grid.starts)
        for first, stop in ((0, 2), (2, 5), (bars - 2, bars), (1, bars + 3)):
            span = Span(grid.start_of_bar(first), grid.start_of_bar(stop))
            arranged = arrange(scheme, notes, span, grid, vocab)
            assert (arranged.tokens == vocab).sum() == 1 == (arranged.tokens == vocab + 1).sum()
            assert arranged.tokens[arranged.middle - 1] == vocab + 1  # <middle> before it
            assert len(arranged.bar_pos) == len(arranged.tokens)
            assert restore(scheme, arranged.tokens, span, vocab).equals(notes)


def test_the_middle_is_the_span_encoded_on_its_own(shards):
    """Its tokens are the encoding of the span's notes from the span's first step; its bar
    positions the song's at those steps."""
    scheme, shard = load_scheme(shards["index"]), load_shard(shards["index"], "train")
    vocab = scheme.fields[0]
    tokens, times, bar_pos, grid = next(songs(shard))
    notes = scheme.decode(tokens)
    span = Span(grid.start_of_bar(3), grid.start_of_bar(5))
    arranged = arrange(scheme, notes, span, grid, vocab)
    inside = (notes.onset >= span.start) & (notes.onset < span.end)
    middle = scheme.decode(np.concatenate([tokens[:1], arranged.tokens[arranged.middle :]]))
    np.testing.assert_array_equal(middle.onset, notes.onset[inside] - span.start)
    np.testing.assert_array_equal(middle.pitch, notes.pitch[inside])
    at = {int(t): int(p) for t, p in zip(times, bar_pos, strict=True)}
    encoded = scheme.encode(middle)
    want = [at[int(t) + span.start] for t in encoded.times[1:-1]]
    assert arranged.bar_pos[arranged.middle : -1].tolist() == want


def test_the_grid_gives_the_stored_bar_positions_and_counts_on_past_the_end(shards):
    shard = load_shard(shards["index"], "train")
    for _, times, bar_pos, grid in songs(shard):
        np.testing.assert_array_equal(grid.position(times), bar_pos)
        last = len(grid.starts) - 1
        assert grid.start_of_bar(last + 2) - grid.start_of_bar(last) == 2 * grid.bar_steps


def test_a_scheme_of_rows_says_it_cannot(shards):
    scheme, shard = load_scheme(shards["codebook"]), load_shard(shards["codebook"], "train")
    tokens, _, _, grid = next(songs(shard))
    with pytest.raises(MidigenError, match="one-field scheme; codebook"):
        arrange(scheme, scheme.decode(tokens), Span(0, grid.bar_steps), grid, scheme.fields[0])


def test_parts_take_their_bar_positions_from_the_song_not_from_their_own_start(shards):
    """On a grid with a 4-step pickup bar, a middle that starts at bar 2 (step 20) does not
    sit where a part starting at step 0 would."""
    scheme, shard = load_scheme(shards["index"]), load_shard(shards["index"], "train")
    tokens, *_ = next(songs(shard))
    notes = scheme.decode(tokens)
    grid = BarGrid(np.array([0, 4, 20, 36]), np.zeros(4, np.int64), bar_steps=16)
    span = Span(grid.start_of_bar(2), grid.start_of_bar(4))
    arranged = arrange(scheme, notes, span, grid, scheme.fields[0])
    steps = scheme.encode(scheme.decode(np.r_[tokens[:1], arranged.tokens[arranged.middle :]]))
    want = grid.position(steps.times[1:-1] + span.start)
    np.testing.assert_array_equal(arranged.bar_pos[arranged.middle : -1], want)
    assert (want != grid.position(steps.times[1:-1])).any()
