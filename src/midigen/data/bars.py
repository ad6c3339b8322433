"""A song's bars, from the step and the bar position of each of its tokens (what shards and
prompts keep): the bar length it mostly has, where each bar starts, and the bar position of
any step."""

from __future__ import annotations

import numpy as np


def bar_starts(times: np.ndarray, bar_pos: np.ndarray) -> np.ndarray:
    """The steps where the bars a song's tokens fall in start, in order."""
    return np.unique(np.asarray(times, np.int64) - np.asarray(bar_pos, np.int64))


def bar_steps_of(times: np.ndarray, bar_pos: np.ndarray, steps_per_beat: int) -> int:
    """A song's bar length in steps: the most common distance between the starts of the bars
    its tokens fall in (a meter change or a bar without a token does not move it)."""
    starts = bar_starts(times, bar_pos)
    if len(starts) < 2:  # all in one bar: at least as long as what it holds
        return max(4 * steps_per_beat, int(np.max(bar_pos)) + 1)
    lengths, counts = np.unique(np.diff(starts), return_counts=True)
    return int(lengths[counts.argmax()])


class BarGrid:
    """A song's bar starts, from its tokens' steps and bar positions, continued past its last
    bar at its usual bar length (`bar_steps`): steps -> bar starts and bar positions."""

    def __init__(self, times: np.ndarray, bar_pos: np.ndarray, bar_steps: int):
        self.starts = bar_starts(times, bar_pos)
        self.bar_steps = bar_steps

    @classmethod
    def of(cls, times: np.ndarray, bar_pos: np.ndarray, steps_per_beat: int) -> BarGrid:
        """The grid of a song's tokens, at its most common bar length."""
        return cls(times, bar_pos, bar_steps_of(times, bar_pos, steps_per_beat))

    def start_of_bar(self, bar: int) -> int:
        """The step where bar `bar` (0-based) starts, counting on past the last known bar."""
        if bar < len(self.starts):
            return int(self.starts[bar])
        return int(self.starts[-1]) + (bar - len(self.starts) + 1) * self.bar_steps

    def position(self, steps: np.ndarray) -> np.ndarray:
        """Each step's position in its bar (bars without a token keep the usual length)."""
        steps = np.asarray(steps, np.int64)
        bar = np.searchsorted(self.starts, steps, side="right") - 1
        return (steps - self.starts[np.maximum(bar, 0)]) % self.bar_steps
