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

__all__ = ["DecodeError", "Encoded", "Scheme"]


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

    def encode(self, notes: Notes) -> Encoded:
        """Rows from <sos> to <eos>."""
        ...

    def decode(self, tokens: np.ndarray) -> Notes:
        """The notes of a whole song's rows; DecodeError names the first row it cannot read."""
        ...

    def changes(self, notes: Notes) -> dict[str, int]:
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
