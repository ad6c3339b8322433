"""Prompts: a song's opening bars, cut where the song could end, and the bar grid its
continuation is counted on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from midigen.data.bars import bar_steps_of
from midigen.encodings import Cursor, Grammar, whole_rows_and_cursor


@dataclass(frozen=True)
class Prompt:
    """The opening of a song to continue (from <sos>, whole rows), the bar position of each of
    its tokens, and the bar grid on which the continuation's bar positions are counted."""

    tokens: np.ndarray
    bar_pos: np.ndarray
    bar_steps: int
    bar_start: int = 0  # a step where a bar begins (the grid's phase)
    cursor: Cursor | None = None  # the grammar's state after the prompt, when split_song knew it

    def bar_position(self, step: int) -> int:
        return (step - self.bar_start) % self.bar_steps


def split_song(
    tokens: np.ndarray,
    times: np.ndarray,
    bar_pos: np.ndarray,
    bars: int,
    steps_per_beat: int,
    grammar: Grammar | None = None,
) -> tuple[Prompt, np.ndarray]:
    """A song's first `bars` bars as a prompt (the tokens before step bars * bar_steps, never
    <eos>; with the scheme's `grammar`, cut back to where the song could end, for schemes
    whose tokens at one step may leave a row unfinished: merged ones) and the rest of the
    song, its real continuation."""
    bar_steps = bar_steps_of(times, bar_pos, steps_per_beat)
    n = min(int(np.searchsorted(times, bars * bar_steps)), len(tokens) - 1)
    cursor = None
    if grammar is not None:
        head = np.asarray(tokens[:n]).tolist()
        kept, cursor = whole_rows_and_cursor(grammar, grammar.parse(head[:1]), head[1:])
        n = 1 + len(kept)
    bar_start = int(times[n - 1]) - int(bar_pos[n - 1])
    prompt = Prompt(np.asarray(tokens[:n]), np.asarray(bar_pos[:n]), bar_steps, bar_start, cursor)
    return prompt, np.asarray(tokens[n:])
