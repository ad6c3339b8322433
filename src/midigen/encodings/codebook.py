"""MusicBox's codebook scheme: every note one row of three fields (seed 001).

    field 0  pitch: 0..127, or <sos> / <eos> (a row that opens / ends the song)
    field 1  step: time since the previous note's onset (the song's start for the first),
             the index of the nearest value in the steps codebook
    field 2  duration: the index of the nearest value in the durations codebook

Notes of one onset come in pitch order, the later ones with step 0. Instruments are merged
(the scheme has no program field): of two notes on one onset and pitch, the longer is kept.
Quantizing to a codebook is lossy unless every time between onsets and every duration is one
of its values; a value past the last entry is clamped to it. Each note's onset is the sum of
the quantized steps before it, so one changed step moves every later note: `changes` counts
the notes whose step or duration the codebook changed (and the clamped ones among them), and
decode(encode(notes)) gives the notes exactly when they count 0 and no instruments merge.
The <sos> and <eos> rows carry index 0 in the other two fields, which decode ignores.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from midigen.encodings import NO_PEDALS, DecodeError, Encoded, SchemeGrammar, one_instrument
from midigen.midi.files import Notes

SOS, EOS = 128, 129  # values of the pitch field beyond the 128 pitches
PITCH, STEP, DURATION = range(3)  # the fields


@dataclass(frozen=True)
class Codebook:
    """The scheme for two codebooks of grid steps (sorted, distinct; steps from 0, durations
    from 1)."""

    steps: tuple[int, ...]
    durations: tuple[int, ...]
    name: str = "codebook"

    def __post_init__(self) -> None:
        for label, book, low in (("steps", self.steps, 0), ("durations", self.durations, 1)):
            if not book or list(book) != sorted(set(book)) or book[0] != low:
                raise ValueError(
                    f"the {label} codebook must be distinct increasing steps from {low} "
                    f"(got {list(book)})"
                )

    @property
    def fields(self) -> tuple[int, int, int]:
        return 130, len(self.steps), len(self.durations)

    def encode(self, notes: Notes, pedals: np.ndarray = NO_PEDALS) -> Encoded:
        kept = one_instrument(notes)
        step = nearest(self.steps, np.diff(kept.onset, prepend=0))
        rows = np.column_stack([kept.pitch, step, nearest(self.durations, kept.duration)])
        tokens = np.concatenate([[[SOS, 0, 0]], rows, [[EOS, 0, 0]]]).astype(np.int64)
        onsets = np.cumsum(np.asarray(self.steps)[step])  # where decode puts each note
        end = int((onsets + np.asarray(self.durations)[rows[:, 2]]).max(initial=0))
        return Encoded(tokens, np.concatenate([[0], onsets, [end]]).astype(np.int64))

    def decode(self, tokens: np.ndarray) -> Notes:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1, 3)
        problem = self._problem(tokens)
        if problem:
            raise DecodeError(problem)
        rows = tokens[1:-1]
        onset = np.cumsum(np.asarray(self.steps)[rows[:, STEP]])
        duration = np.asarray(self.durations)[rows[:, DURATION]]
        program = np.zeros(len(rows), dtype=np.int64)
        return one_instrument(Notes(onset, program, rows[:, PITCH], duration))

    def _problem(self, tokens: np.ndarray) -> str | None:
        """The first thing wrong with a song's rows, or None."""
        if len(tokens) < 2 or tokens[0, PITCH] != SOS:
            return "a song must start with a <sos> row"
        if tokens[-1, PITCH] != EOS:
            return "a song must end with an <eos> row"
        for field, size in enumerate(self.fields):
            bad = np.flatnonzero((tokens[:, field] < 0) | (tokens[:, field] >= size))
            if len(bad):
                return f"row {bad[0]}: field {field} value {tokens[bad[0], field]} not below {size}"
        special = np.flatnonzero(tokens[1:-1, PITCH] >= SOS)
        if len(special):
            return f"row {special[0] + 1}: <sos> or <eos> inside the song"
        return None

    def changes(
        self, notes: Notes, pedals: np.ndarray = NO_PEDALS, encoded: Encoded | None = None
    ) -> dict[str, int]:
        kept = one_instrument(notes)
        ioi, duration = np.diff(kept.onset, prepend=0), kept.duration
        return {
            "merged_instruments": len(notes) - len(kept),
            "step_changed": _off_book(self.steps, ioi),
            "step_clamped": int(np.count_nonzero(ioi > self.steps[-1])),
            "duration_changed": _off_book(self.durations, duration),
            "duration_clamped": int(np.count_nonzero(duration > self.durations[-1])),
        }

    eos_row = (EOS, 0, 0)
    pitch_range = (0, 128)

    def pitches(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.asarray(tokens)
        mask = np.zeros(tokens.shape, dtype=bool)
        mask.reshape(-1, 3)[:, PITCH] = tokens.reshape(-1, 3)[:, PITCH] < SOS
        return mask, tokens[mask]

    def kinds(self, tokens: np.ndarray) -> np.ndarray:
        """A row's type: a note, or <eos>."""
        pitch = np.asarray(tokens).reshape(-1, 3)[:, PITCH]
        return np.where(pitch < SOS, "note", "eos")

    def note_counts(self, tokens: np.ndarray) -> np.ndarray:
        return (np.asarray(tokens).reshape(-1, 3)[:, PITCH] < SOS).astype(np.int64)

    @cached_property
    def grammar(self) -> CodebookGrammar:
        return CodebookGrammar(self)

    def allowed(self, prefix: np.ndarray) -> list[np.ndarray]:
        """Per field, the values the next row may take after the rows `prefix`: <sos> first;
        then a note or <eos> in the pitch field, any codebook index in the others."""
        rows = [tuple(row) for row in np.asarray(prefix, dtype=np.int64).reshape(-1, 3).tolist()]
        if not rows:
            pitch = np.zeros(self.fields[PITCH], dtype=bool)
            pitch[SOS] = True
            return [pitch, *(np.ones(n, dtype=bool) for n in self.fields[1:])]
        masks = self.grammar.allowed([self.grammar.parse(rows)])[0]
        return [masks[f, :n].copy() for f, n in enumerate(self.fields)]


@dataclass(frozen=True)
class CodebookCursor:
    """A song's place in the codebook scheme: the onset of its last note, whether it ended."""

    step: int = 0
    ended: bool = False


class CodebookGrammar(SchemeGrammar):
    """Rows, not tokens: after <sos> a note (any pitch, any codebook entries) or <eos>. Masks
    are (F, V) per row, each field padded to the widest (the pitch field) with False."""

    def __init__(self, scheme: Codebook):
        self.scheme = scheme
        width = max(scheme.fields)
        self._rows: dict[tuple, np.ndarray] = {}
        self._open = np.zeros((len(scheme.fields), width), dtype=bool)
        for f, n in enumerate(scheme.fields):
            self._open[f, :n] = True
        self._open[PITCH, SOS] = False  # <sos> only opens a song

    opening = "a <sos> row"

    def start(self) -> CodebookCursor:
        return CodebookCursor()

    def opens(self, row) -> bool:
        return tuple(row)[PITCH] == SOS

    def advance(self, cursor: CodebookCursor, row) -> CodebookCursor:
        """The cursor after `row` (pitch, step, duration); DecodeError if not allowed here."""
        row = tuple(int(v) for v in row)
        mask = self.allowed([cursor])[0]
        if len(row) != 3 or not all(
            0 <= v < mask.shape[1] and mask[f, v] for f, v in enumerate(row)
        ):
            raise DecodeError(f"row {list(row)} cannot follow here")
        if row[PITCH] == EOS:
            return CodebookCursor(cursor.step, ended=True)
        return CodebookCursor(self.sounds_at(cursor, row))

    def sounds_at(self, cursor: CodebookCursor, row) -> int:
        """A note row sounds at the last onset plus its own step field."""
        if tuple(row)[PITCH] >= SOS:
            return cursor.step
        return cursor.step + self.scheme.steps[int(tuple(row)[STEP])]

    def _row(self, cursor: CodebookCursor, eos: bool) -> np.ndarray:
        """(1, F, V): one mask per field."""
        if (cursor.ended, eos) not in self._rows:
            mask = np.zeros_like(self._open) if cursor.ended else self._open.copy()
            mask[PITCH, EOS] &= eos
            self._rows[cursor.ended, eos] = mask[None]
        return self._rows[cursor.ended, eos]


def nearest(book: tuple[int, ...], values: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook value (the lower one on a tie); past the end, the last."""
    book_array, values = np.asarray(book), np.asarray(values)
    if len(book_array) == 1:
        return np.zeros(len(values), dtype=np.int64)
    upper = np.clip(np.searchsorted(book_array, values), 1, len(book_array) - 1)
    lower = upper - 1
    closer_above = book_array[upper] - values < values - book_array[lower]
    return np.where(closer_above, upper, lower).astype(np.int64)


def _off_book(book: tuple[int, ...], values: np.ndarray) -> int:
    return int(np.count_nonzero(~np.isin(values, book)))
