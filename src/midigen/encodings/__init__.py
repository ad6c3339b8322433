"""Token schemes: one small interface, one module per scheme (issue 13).

A scheme turns a song's quantized notes into rows of tokens and back. A row holds one token
per field: flat schemes (index, events, remi) have one field, MusicBox's codebook scheme three
(pitch, time since the previous onset, duration), which the model embeds and sums and predicts
with one head per field. Every row also carries the absolute step at which it sounds (for the
bar-position embedding and for cutting prompts).

What a scheme changes in the notes it is given (quantizing to a codebook, clamping) it counts
by cause, as the encode stage counts what the grid does (midi.NOTE_CHANGES).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from midigen.encoding import DecodeError
from midigen.midi import Notes

NO_PEDALS = np.zeros((0, 2), dtype=np.int64)  # a song without a sustain pedal

__all__ = ["NO_PEDALS", "DecodeError", "Encoded", "Scheme", "one_instrument"]


@dataclass(frozen=True)
class Encoded:
    """One song in a scheme: (N, F) int64 tokens, one row per time step, F fields, and the
    (N,) int64 step at which each row sounds."""

    tokens: np.ndarray
    times: np.ndarray


class Scheme(Protocol):
    """What every scheme provides; pure functions of its configuration."""

    name: str

    @property
    def fields(self) -> tuple[int, ...]:
        """The vocabulary size of each field (one entry for flat schemes)."""
        ...

    def encode(self, notes: Notes, pedals: np.ndarray = NO_PEDALS) -> Encoded:
        """Rows from <sos> to <eos>. `pedals`: the song's sustain pedal spans (midi.Song), for
        the schemes that model the pedal (events); the others play each note as its key is
        held, as the encode stage always has."""
        ...

    def decode(self, tokens: np.ndarray) -> Notes:
        """The notes of a whole song's rows; DecodeError names the first row it cannot read."""
        ...

    def changes(self, notes: Notes, pedals: np.ndarray = NO_PEDALS) -> dict[str, int]:
        """How many of `notes` encode() changes or drops, by cause (0 for a lossless scheme)."""
        ...

    def note_counts(self, tokens: np.ndarray) -> np.ndarray:
        """(N,) int: the notes each row starts (bits per note divide by their sum; a learned
        token may hold several)."""
        ...

    def allowed(self, prefix: np.ndarray) -> list[np.ndarray]:
        """Per field, a bool mask of the values the next row may take after the rows `prefix`
        (none after <eos>): generation samples inside it, so every song it writes decodes."""
        ...


def one_instrument(notes: Notes) -> Notes:
    """The notes a scheme without instruments keeps: one per (onset, pitch), the longest, in
    (onset, pitch) order, all on program 0 (velocities, if any, go with their notes)."""
    order = np.lexsort((-notes.duration, notes.pitch, notes.onset))
    onset, pitch = notes.onset[order], notes.pitch[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (onset[1:] != onset[:-1]) | (pitch[1:] != pitch[:-1])
    kept = order[first]
    velocity = None if notes.velocity is None else notes.velocity[kept]
    program = np.zeros(len(kept), dtype=np.int64)
    return Notes(notes.onset[kept], program, notes.pitch[kept], notes.duration[kept], velocity)
