"""Evidence that can tell an effect from noise: per-song NLL tables and bootstrap intervals.

Evaluation sums each test song's NLL and counts its tokens in every probe cell (all tokens,
early and late positions, the two copies of the repeat probe, the reach of a repeated context)
and writes that table as songs.csv. Two variants scored on the same songs are compared song by
song: resampling songs with replacement gives a 95% percentile interval of the token-weighted
mean difference. A memory effect is the difference on a cell memory can reach minus the
difference on a cell it cannot, so a variant that is better (or worse) everywhere shows none.
Generated music gets intervals the same way, resampling prompts instead of songs.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from midigen.errors import MidigenError

SONGS_CSV = "songs.csv"  # in plots/SCHEME/eval/VARIANT/
CACHE_FOLDER = "cache"  # ... and there, the variant plus the copy cache (evaluation/cache.py)
SONGS_COLUMNS = ("song", "cell", "nll_sum", "tokens")
REACH = ("none", "segment", "xl", "beyond")  # where a context's last earlier occurrence lies
CELLS = (
    "all",
    "early",  # position in the song < segment_len: the song's start is in the segment
    "late",  # position >= segment_len: only a memory reaches the song's start
    "repeat_first",  # repeat probe: the first copy of a song played twice
    "repeat_second",  # ... and the second, which a memory can copy from the first
    *(f"reach_{r}" for r in REACH),
)
# A memory effect: (cell memory can reach, cell it cannot); the difference of their differences.
CONTRASTS = {
    "late_vs_early": ("late", "early"),
    "second_vs_first": ("repeat_second", "repeat_first"),
    "beyond_vs_none": ("reach_beyond", "reach_none"),
    "xl_vs_none": ("reach_xl", "reach_none"),
}
RESAMPLES = 2000
SEED = 0


class Cell(NamedTuple):
    """One probe cell over the songs: NLL sum (nats) and token count per song."""

    nll_sum: np.ndarray
    tokens: np.ndarray


@dataclass(frozen=True)
class SongCells:
    """Per song and cell the NLL sum and token count: the unit of every paired comparison."""

    songs: tuple[str, ...]  # sha256 of each song, in test-shard order
    nll_sum: np.ndarray  # (songs, CELLS) nats
    tokens: np.ndarray  # (songs, CELLS)

    def cell(self, name: str) -> Cell:
        """The per-song column of one cell."""
        i = CELLS.index(name)
        return Cell(self.nll_sum[:, i], self.tokens[:, i])

    def mean(self, name: str) -> float:
        """Mean NLL per token of a cell over all songs (NaN when it has no token)."""
        nll_sum, tokens = self.cell(name)
        return float(nll_sum.sum() / tokens.sum()) if tokens.sum() else float("nan")


def write_song_cells(path: Path, table: SongCells) -> None:
    """songs.csv: one row per song and cell (SONGS_COLUMNS), songs in shard order."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SONGS_COLUMNS)
        for s, song in enumerate(table.songs):
            for c, cell in enumerate(CELLS):
                writer.writerow([song, cell, repr(float(table.nll_sum[s, c])), table.tokens[s, c]])


def read_song_cells(path: Path) -> SongCells:
    """songs.csv as `write_song_cells` writes it, or one clear error naming the file."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise MidigenError(f"missing {path} (run `midigen evaluate`)") from None
    songs = tuple(dict.fromkeys(row.get("song") for row in rows))
    expected = [(song, cell) for song in songs for cell in CELLS]
    try:
        if [(row["song"], row["cell"]) for row in rows] != expected:
            raise ValueError
        nll_sum = np.array([float(row["nll_sum"]) for row in rows]).reshape(-1, len(CELLS))
        tokens = np.array([int(row["tokens"]) for row in rows]).reshape(-1, len(CELLS))
    except (KeyError, TypeError, ValueError):
        raise MidigenError(
            f"{path}: expected columns {', '.join(SONGS_COLUMNS)} with the cells "
            f"{', '.join(CELLS)} once per song, in that order (re-run `midigen evaluate`)"
        ) from None
    return SongCells(songs, nll_sum, tokens)


# ---- intervals ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% bootstrap percentile interval."""

    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | None]:
        """For JSON, which has no NaN: an undefined value (no token to compare) is None."""
        return {k: v if math.isfinite(v) else None for k, v in asdict(self).items()}


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int) -> Interval:
    """`statistic` of all n units, and the 2.5/97.5 percentiles of it over units resampled
    with replacement; `statistic` maps index arrays (..., n) to values (...). Resamples where
    it is undefined (NaN: a cell with no token in them) are left out."""
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    resampled = np.random.default_rng(SEED).integers(0, n, size=(RESAMPLES, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        point, samples = statistic(np.arange(n)), statistic(resampled)
    samples = samples[np.isfinite(samples)]
    low, high = np.percentile(samples, [2.5, 97.5]) if len(samples) else (np.nan, np.nan)
    return Interval(float(point), float(low), float(high))


def _token_mean(cell: Cell, songs: np.ndarray) -> np.ndarray:
    """Mean NLL per token over the songs indexed along the last axis."""
    return cell.nll_sum[songs].sum(-1) / cell.tokens[songs].sum(-1)


def _difference(variant: Cell, base: Cell) -> Callable[[np.ndarray], np.ndarray]:
    """Token-weighted mean NLL of `variant` minus `base` over the songs indexed."""
    return lambda songs: _token_mean(variant, songs) - _token_mean(base, songs)


def paired_difference(variant: Cell, base: Cell) -> Interval:
    """Mean NLL of `variant` minus `base` on the same songs, resampling songs."""
    return bootstrap(_difference(variant, base), len(base.tokens))


def memory_effect(variant: SongCells, base: SongCells, contrast: str) -> Interval:
    """(variant - base on the cell memory can reach) - (variant - base on the cell it cannot)
    for one of CONTRASTS, over the same resampled songs: below zero, memory helped."""
    reach, out_of_reach = CONTRASTS[contrast]
    near = _difference(variant.cell(reach), base.cell(reach))
    far = _difference(variant.cell(out_of_reach), base.cell(out_of_reach))
    return bootstrap(lambda songs: near(songs) - far(songs), len(base.songs))


def mean_interval(values: np.ndarray) -> Interval:
    """Mean of per-unit values (e.g. one per prompt) over the units where they are defined."""
    defined = np.isfinite(values)
    filled = np.where(defined, values, 0.0)
    return bootstrap(lambda units: filled[units].sum(-1) / defined[units].sum(-1), len(values))


def ratio_interval(numerator: np.ndarray, denominator: np.ndarray) -> Interval:
    """Sum of `numerator` over sum of `denominator` (per unit, e.g. a song's NLL and its notes),
    resampling units: a rate such as bits per note, with its interval over songs."""
    num, den = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    return bootstrap(lambda units: num[units].sum(-1) / den[units].sum(-1), len(num))


def paired_ratio_difference(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
) -> Interval:
    """ratio of `a` minus ratio of `b`, each (numerator, denominator) per unit, on the same
    resampled units (two encodings of the same songs: bits per note of one minus the other)."""
    (an, ad), (bn, bd) = (tuple(np.asarray(x, np.float64) for x in pair) for pair in (a, b))
    return bootstrap(
        lambda units: an[units].sum(-1) / ad[units].sum(-1) - bn[units].sum(-1) / bd[units].sum(-1),
        len(an),
    )
