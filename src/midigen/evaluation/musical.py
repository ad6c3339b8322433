"""Musical statistics of notes, to compare generated music with real music.

Pure functions of `midigen.midi.files.Notes` on the step grid. Histograms: pitch, duration,
inter-onset interval (IOI: steps between successive distinct onsets) and polyphony (notes
sounding at a step, over the steps where any note sounds); two histograms agree by their
overlapping area. Scalars after MusPy (Dong et al. 2020): pitch-class entropy, scale
consistency, groove consistency, empty-beat rate and pitch range. A statistic that needs more
notes than a piece has is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from midigen.midi.files import Notes

FEATURES = ("pitch", "duration", "ioi", "polyphony")
LONGEST_BEATS = 8  # durations and IOIs of 8 beats or more share the last histogram bin
MOST_VOICES = 16  # polyphony of 16 or more shares the last bin
STATISTICS = (
    "pitch_class_entropy",
    "scale_consistency",
    "groove_consistency",
    "empty_beat_rate",
    "pitch_range",
)
MAJOR_SCALE = np.array([0, 2, 4, 5, 7, 9, 11])  # a natural minor scale holds the same notes
# as its relative major, so the 12 major scales cover the 24 major/minor ones


# ---- histograms ------------------------------------------------------------------------------


def sounding(notes: Notes) -> np.ndarray:
    """How many notes sound at each step 0..end-1."""
    delta = np.zeros(notes.end + 1, dtype=np.int64)
    np.add.at(delta, notes.onset, 1)
    np.add.at(delta, notes.onset + notes.duration, -1)
    return np.cumsum(delta)[:-1]


def feature_values(notes: Notes) -> dict[str, np.ndarray]:
    """Per feature, the values a piece contributes to its histogram."""
    voices = sounding(notes)
    return {
        "pitch": notes.pitch,
        "duration": notes.duration,
        "ioi": np.diff(np.unique(notes.onset)),
        "polyphony": voices[voices > 0],
    }


def histogram_bins(steps_per_beat: int) -> dict[str, int]:
    """Number of bins per feature; bin i counts value i, the last bin everything above it."""
    longest = LONGEST_BEATS * steps_per_beat
    return {"pitch": 128, "duration": longest + 1, "ioi": longest + 1, "polyphony": MOST_VOICES + 1}


def histograms(pieces: Sequence[Notes], steps_per_beat: int) -> dict[str, np.ndarray]:
    """Counts per feature, pooled over pieces."""
    bins = histogram_bins(steps_per_beat)
    counts = {feature: np.zeros(n, dtype=np.int64) for feature, n in bins.items()}
    for notes in pieces:
        for feature, values in feature_values(notes).items():
            clipped = np.minimum(values, bins[feature] - 1)
            counts[feature] += np.bincount(clipped, minlength=bins[feature])
    return counts


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Shared area of two histograms once normalised: 1 identical shapes, 0 disjoint."""
    if a.sum() == 0 or b.sum() == 0:
        return float("nan")
    return float(np.minimum(a / a.sum(), b / b.sum()).sum())


# ---- scalar statistics -----------------------------------------------------------------------


def pitch_class_entropy(notes: Notes) -> float:
    """Entropy in bits of the pitch classes played: 0 for one pitch class, log2(12) for all."""
    if len(notes) == 0:
        return float("nan")
    p = np.bincount(notes.pitch % 12, minlength=12) / len(notes)
    p = p[p > 0]
    return float(0.0 - (p * np.log2(p)).sum())


def scale_consistency(notes: Notes) -> float:
    """Largest share of notes that fit one major (or natural minor) scale: 1 for a tonal piece."""
    if len(notes) == 0:
        return float("nan")
    counts = np.bincount(notes.pitch % 12, minlength=12)
    in_scale = [counts[(tonic + MAJOR_SCALE) % 12].sum() for tonic in range(12)]
    return float(max(in_scale) / len(notes))


def groove_consistency(notes: Notes, bar_steps: int) -> float:
    """1 - the mean share of bar positions whose onset/no-onset differs from the bar before.

    1 when every bar repeats the same rhythm; over the bars from the first to the last onset.
    """
    if len(notes) == 0:
        return float("nan")
    first_bar, last_bar = notes.onset.min() // bar_steps, notes.onset.max() // bar_steps
    if first_bar == last_bar:
        return float("nan")
    grid = np.zeros((last_bar - first_bar + 1) * bar_steps, dtype=bool)
    grid[notes.onset - first_bar * bar_steps] = True
    bars = grid.reshape(-1, bar_steps)
    return float(1 - (bars[1:] != bars[:-1]).mean())


def empty_beat_rate(notes: Notes, steps_per_beat: int) -> float:
    """Share of beats in which no note sounds, from the first note's beat to the last note's end."""
    if len(notes) == 0:
        return float("nan")
    first = notes.onset.min() // steps_per_beat * steps_per_beat
    beats = -(-(notes.end - first) // steps_per_beat)
    voices = np.zeros(beats * steps_per_beat, dtype=np.int64)
    voices[: notes.end - first] = sounding(notes)[first:]
    return float((voices.reshape(beats, steps_per_beat).max(axis=1) == 0).mean())


def pitch_range(notes: Notes) -> float:
    """Semitones between the lowest and the highest note."""
    return float(notes.pitch.max() - notes.pitch.min()) if len(notes) else float("nan")


def statistics(notes: Notes, steps_per_beat: int, bar_steps: int) -> dict[str, float]:
    """All scalar statistics of one piece."""
    return {
        "pitch_class_entropy": pitch_class_entropy(notes),
        "scale_consistency": scale_consistency(notes),
        "groove_consistency": groove_consistency(notes, bar_steps),
        "empty_beat_rate": empty_beat_rate(notes, steps_per_beat),
        "pitch_range": pitch_range(notes),
    }
