"""Paired evidence: per-song NLL tables (songs.csv) and bootstrap intervals with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from midigen.errors import MidigenError
from midigen.evaluation.paired import (
    CELLS,
    CONTRASTS,
    Cell,
    SongCells,
    bootstrap,
    mean_interval,
    memory_effect,
    paired_difference,
    read_song_cells,
    write_song_cells,
)


def random_cell(songs: int, seed: int = 0) -> Cell:
    """Per-song token counts of 20-200 and about 2 nats per token, varying by song."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(20, 200, songs)
    return Cell(tokens * rng.normal(2.0, 0.3, songs), tokens)


def random_table(songs: int, seed: int = 0) -> SongCells:
    cells = [random_cell(songs, seed + i) for i in range(len(CELLS))]
    return SongCells(
        tuple(f"{i:064x}" for i in range(songs)),
        np.stack([c.nll_sum for c in cells], axis=1),
        np.stack([c.tokens for c in cells], axis=1),
    )


def shifted(table: SongCells, nats: dict[str, float]) -> SongCells:
    """`table` with every token of each named cell `nats` higher."""
    shift = np.array([nats.get(cell, 0.0) for cell in CELLS])
    return SongCells(table.songs, table.nll_sum + shift * table.tokens, table.tokens)


def test_identical_tables_differ_by_exactly_zero():
    base = random_cell(30)
    same = Cell(base.nll_sum.copy(), base.tokens.copy())
    interval = paired_difference(same, base)
    assert (interval.mean, interval.low, interval.high) == (0.0, 0.0, 0.0)


def test_a_constant_shift_of_every_token_is_that_shift():
    base = random_cell(30)
    worse = Cell(base.nll_sum + 0.25 * base.tokens, base.tokens)
    interval = paired_difference(worse, base)
    for value in (interval.mean, interval.low, interval.high):
        assert value == pytest.approx(0.25, abs=1e-12)


def test_the_point_is_the_token_weighted_mean_difference_and_lies_in_its_interval():
    base, other = random_cell(40, seed=1), random_cell(40, seed=2)
    variant = Cell(other.nll_sum / other.tokens * base.tokens, base.tokens)  # same tokens
    interval = paired_difference(variant, base)
    expected = (variant.nll_sum.sum() - base.nll_sum.sum()) / base.tokens.sum()
    assert interval.mean == pytest.approx(expected)
    assert interval.low < interval.mean < interval.high


def test_the_interval_narrows_as_songs_are_added():
    def width(songs: int) -> float:
        base = random_cell(songs, seed=3)
        noise = np.random.default_rng(4).normal(-0.1, 0.2, songs)  # per-song difference
        interval = paired_difference(Cell(base.nll_sum + noise * base.tokens, base.tokens), base)
        assert interval.low <= interval.mean <= interval.high
        return interval.high - interval.low

    few, many = width(10), width(160)
    assert 0 < many < few / 2  # about 1/sqrt(16) as wide


def test_a_variant_better_everywhere_has_no_memory_effect():
    """Lower NLL on every token, first copy included, is a level, not memory at work."""
    base = random_table(25)
    better = shifted(base, {cell: -0.3 for cell in CELLS})
    for contrast in CONTRASTS:
        effect = memory_effect(better, base, contrast)
        assert effect.mean == pytest.approx(0.0, abs=1e-12)
        assert effect.low == pytest.approx(0.0, abs=1e-12)
        assert effect.high == pytest.approx(0.0, abs=1e-12)
        assert effect.low <= effect.high


def test_a_memory_effect_is_the_difference_where_memory_reaches_minus_where_it_cannot():
    base = random_table(25)
    copies = shifted(base, {cell: -0.1 for cell in CELLS} | {"repeat_second": -0.9})
    effect = memory_effect(copies, base, "second_vs_first")
    assert effect.mean == pytest.approx(-0.8) and effect.high == pytest.approx(-0.8)
    assert memory_effect(copies, base, "late_vs_early").mean == pytest.approx(0.0, abs=1e-12)
    noisy = SongCells(base.songs, copies.nll_sum + random_table(25, 9).nll_sum / 50, base.tokens)
    effect = memory_effect(noisy, base, "second_vs_first")
    assert effect.low < effect.mean < effect.high < 0


def test_a_cell_without_tokens_has_no_interval():
    empty = Cell(np.zeros(5), np.zeros(5, dtype=np.int64))
    assert paired_difference(empty, empty).as_dict() == {"mean": None, "low": None, "high": None}


def test_mean_over_prompts_skips_undefined_values():
    interval = mean_interval(np.array([1.0, math.nan, 3.0]))
    assert interval.mean == 2.0 and 1.0 <= interval.low <= interval.high <= 3.0
    assert mean_interval(np.array([math.nan])).as_dict()["mean"] is None
    assert mean_interval(np.zeros(0)).as_dict()["mean"] is None


def test_song_table_round_trips_through_csv(tmp_path):
    table = random_table(4)
    write_song_cells(tmp_path / "songs.csv", table)
    back = read_song_cells(tmp_path / "songs.csv")
    assert back.songs == table.songs
    assert np.array_equal(back.nll_sum, table.nll_sum)  # exact: floats written in full
    assert np.array_equal(back.tokens, table.tokens)
    assert back.mean("late") == table.mean("late")

    lines = (tmp_path / "songs.csv").read_text().splitlines()
    assert lines[0] == "song,cell,nll_sum,tokens" and len(lines) == 1 + 4 * len(CELLS)
    (tmp_path / "bad.csv").write_text("\n".join(lines[:-1]))  # one cell missing
    with pytest.raises(MidigenError, match="bad.csv: expected columns song, cell"):
        read_song_cells(tmp_path / "bad.csv")
    with pytest.raises(MidigenError, match="missing .*nothing.csv"):
        read_song_cells(tmp_path / "nothing.csv")


def test_the_interval_is_the_central_95_percent_of_the_bootstrap():
    """The mean of 0..99 resampled: by the normal approximation the 2.5/97.5 percentiles lie
    at 49.5 -/+ 1.96 standard errors (28.87 / sqrt(100) = 2.887), i.e. 43.84 and 55.16; a 3.5
    or 98.5 percentile would be 0.4 inside or outside."""
    values = np.arange(100.0)
    interval = bootstrap(lambda idx: values[idx].mean(axis=-1), 100)
    assert interval.mean == 49.5
    assert interval.low == pytest.approx(43.84, abs=0.3)
    assert interval.high == pytest.approx(55.16, abs=0.3)


def test_one_song_is_its_own_interval_and_an_empty_cell_has_no_mean():
    one = bootstrap(lambda idx: np.array([2.5])[idx].mean(axis=-1), 1)
    assert (one.mean, one.low, one.high) == (2.5, 2.5, 2.5)
    table = SongCells(("a",), np.zeros((1, len(CELLS))), np.zeros((1, len(CELLS))))
    assert math.isnan(table.mean("all"))
