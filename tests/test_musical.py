"""Musical statistics on hand-made notes whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from midigen.evaluation import musical
from midigen.midi.files import Notes


def notes(onset, pitch, duration) -> Notes:
    """Notes sorted as Notes requires: by onset, then pitch."""
    onset, pitch, duration = (np.asarray(a, dtype=np.int64) for a in (onset, pitch, duration))
    order = np.lexsort((pitch, onset))
    return Notes(onset[order], np.zeros(len(onset), np.int64), pitch[order], duration[order])


def melody(pitches, step: int = 4) -> Notes:
    """One note every `step` steps, each `step` long."""
    n = len(pitches)
    return notes(np.arange(n) * step, pitches, np.full(n, step))


C_MAJOR = melody([60, 62, 64, 65, 67, 69, 71, 72])
EMPTY = notes([], [], [])


def test_c_major_scale():
    assert musical.scale_consistency(C_MAJOR) == 1.0
    # pitch classes C twice, six others once: -(2/8 log2 2/8 + 6/8 log2 1/8) = 0.5 + 2.25
    assert musical.pitch_class_entropy(C_MAJOR) == pytest.approx(2.75)
    assert musical.pitch_range(C_MAJOR) == 12


def test_chromatic_scale_and_minor_key():
    chromatic = melody(range(60, 72))
    assert musical.pitch_class_entropy(chromatic) == pytest.approx(math.log2(12))
    assert musical.scale_consistency(chromatic) == pytest.approx(7 / 12)
    a_harmonic_minor = melody([57, 59, 60, 62, 64, 65, 68])  # G# is outside every major scale
    assert musical.scale_consistency(a_harmonic_minor) == pytest.approx(6 / 7)


def test_one_repeated_pitch():
    repeated = melody([64] * 10)
    assert musical.pitch_class_entropy(repeated) == 0.0
    assert musical.scale_consistency(repeated) == 1.0
    assert musical.pitch_range(repeated) == 0


def test_overlap_of_histograms():
    a = np.array([1, 1, 0])
    assert musical.overlap(a, a) == 1.0
    assert musical.overlap(a, 3 * a) == 1.0  # normalised first
    assert musical.overlap(a, np.array([0, 0, 5])) == 0.0
    assert musical.overlap(a, np.array([0, 1, 1])) == pytest.approx(0.5)
    assert math.isnan(musical.overlap(a, np.zeros(3)))


def test_feature_values_and_histograms():
    # a 3-note chord for 4 steps, a 2-step rest, a 4-step note, then a 40-step note
    piece = notes([0, 0, 0, 6, 10], [60, 64, 67, 62, 60], [4, 4, 4, 4, 40])
    values = musical.feature_values(piece)
    assert values["ioi"].tolist() == [6, 4]
    assert sorted(values["polyphony"].tolist()) == [1] * 44 + [3] * 4
    counts = musical.histograms([piece, piece], steps_per_beat=4)
    assert counts["pitch"][60] == 4 and counts["pitch"].sum() == 10
    assert len(counts["duration"]) == 8 * 4 + 1
    assert counts["duration"][4] == 8 and counts["duration"][32] == 2  # 40 steps -> last bin
    assert counts["polyphony"][3] == 8 and counts["polyphony"][1] == 88


def test_groove_consistency():
    same_rhythm = notes([0, 2, 4, 6, 8, 10], [60] * 6, [1] * 6)
    assert musical.groove_consistency(same_rhythm, bar_steps=4) == 1.0
    # bars [1 0 1 0] [1 0 1 0] [1 0 0 0]: 1 of 8 positions changes between successive bars
    one_change = notes([0, 2, 4, 6, 8], [60] * 5, [1] * 5)
    assert musical.groove_consistency(one_change, bar_steps=4) == pytest.approx(1 - 1 / 8)
    assert math.isnan(musical.groove_consistency(notes([0, 2], [60, 62], [1, 1]), 4))


def test_empty_beat_rate():
    # beat 0 sounds, beat 1 is silent, beat 2 sounds
    assert musical.empty_beat_rate(notes([0, 8], [60, 62], [4, 4]), 4) == pytest.approx(1 / 3)
    # a note held over beat 1 fills it; the count starts at the first note's beat (beat 2)
    assert musical.empty_beat_rate(notes([9, 16], [60, 62], [7, 4]), 4) == 0.0
    assert musical.empty_beat_rate(C_MAJOR, 4) == 0.0


def test_statistics_of_nothing_are_nan():
    statistics = musical.statistics(EMPTY, 4, 16)
    assert list(statistics) == list(musical.STATISTICS)
    assert all(math.isnan(v) for v in statistics.values())


def test_histogram_bins_by_hand():
    """Bin i counts value i: 128 pitches, durations and IOIs 0..8 beats, 0..16 voices."""
    assert musical.histogram_bins(4) == {"pitch": 128, "duration": 33, "ioi": 33, "polyphony": 17}
    assert musical.histogram_bins(2)["ioi"] == 17
    counts = musical.histograms([notes([0, 0], [60, 64], [1, 1])], steps_per_beat=4)
    assert all(c.dtype.kind == "i" for c in counts.values())


def test_overlap_with_either_side_empty_is_undefined():
    a = np.array([1, 1, 0])
    assert math.isnan(musical.overlap(np.zeros(3), a))
    assert math.isnan(musical.overlap(np.zeros(3), np.zeros(3)))


def test_a_single_note_is_in_a_major_scale():
    assert musical.scale_consistency(melody([61])) == 1.0


def test_groove_is_measured_from_the_first_bar_with_an_onset():
    """Bars 2..5 of 4 steps: [1 0 0 0] [0 1 0 0] [1 0 0 0] [1 0 0 0]: changes between
    successive bars at 2 + 2 + 0 of 12 positions."""
    late = notes([8, 13, 16, 20], [60] * 4, [1] * 4)
    assert musical.groove_consistency(late, bar_steps=4) == pytest.approx(1 - 4 / 12)
