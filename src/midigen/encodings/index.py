"""The index score (MIDIGen, seed 000) behind the scheme interface, and its grammar.

The score itself is src/midigen/encodings/scores.py (notes -> sparse -> position -> index and back);
this module gives it the interface every scheme has, one field per row, and the grammar that
generation masks its sampling with: every sequence the grammar allows decodes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from midigen.encodings import NO_PEDALS, Encoded, SchemeGrammar, prefix_mask
from midigen.encodings.scores import DecodeError, Vocab, decode_tokens, encode_notes
from midigen.midi.files import Notes

KIND_NAMES = ("eos", "note", "duration", "separator", "program")  # by Vocab.kinds() code; the
# only special token ever predicted is <eos> (<sos> starts every song, <pad> is never a target)
NOTE_KIND = KIND_NAMES.index("note")


@dataclass(frozen=True)
class Index:
    """The index score for one vocabulary."""

    vocab: Vocab
    name: str = "index"

    @property
    def fields(self) -> tuple[int]:
        return (len(self.vocab),)

    @cached_property
    def grammar(self) -> Grammar:
        """Its masks, made once per scheme."""
        return Grammar(self.vocab)

    def encode(self, notes: Notes, pedals: np.ndarray = NO_PEDALS) -> Encoded:
        tokens, times = encode_notes(notes, self.vocab)
        return Encoded(tokens[:, None], times)

    def decode(self, tokens: np.ndarray) -> Notes:
        return decode_tokens(np.asarray(tokens).reshape(-1), self.vocab)

    def changes(
        self, notes: Notes, pedals: np.ndarray = NO_PEDALS, encoded: Encoded | None = None
    ) -> dict[str, int]:
        """Lossless on quantized notes (what the grid changes, midi.NOTE_CHANGES counts)."""
        return {}

    @property
    def eos_row(self) -> tuple[int]:
        return (self.vocab.eos,)

    pitch_range = (0, 128)

    def pitches(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.asarray(tokens)
        notes = (tokens >= self.vocab.note_base) & (tokens < self.vocab.duration_base)
        return notes, tokens[notes] - self.vocab.note_base

    def kinds(self, tokens: np.ndarray) -> np.ndarray:
        return np.array(KIND_NAMES)[self.vocab.kinds()[np.asarray(tokens).reshape(-1)]]

    def note_counts(self, tokens: np.ndarray) -> np.ndarray:
        return (self.vocab.kinds()[np.asarray(tokens).reshape(-1)] == NOTE_KIND).astype(np.int64)

    def allowed(self, prefix: np.ndarray) -> list[np.ndarray]:
        """The tokens that may follow `prefix` (a song's first rows, from <sos>)."""
        return [prefix_mask(self.grammar, prefix, len(self.vocab), self.vocab.sos)]


# ---- the grammar -------------------------------------------------------------------------------

ROW, DURATION, NOTE, END = "row", "duration", "note", "end"  # what a row expects next


@dataclass(frozen=True)
class Cursor:
    """One sequence's place in the grammar, and the time step its next token sounds at."""

    expect: str = ROW
    step: int = 0
    program: bool = True  # a note may open a row: always without programs, else after <iK>
    gap: bool = False  # the awaited duration is a gap's (after <sep>): it advances time

    @property
    def ended(self) -> bool:
        return self.expect == END


class Grammar(SchemeGrammar):
    """Which tokens may come next: the sequences the encoder writes, every one of which
    `decode_tokens` accepts. After <sos> or a duration: a note (in instrument mode only once a
    program token has opened the run), <sep>, a program token, or <eos>; after a note or <sep>:
    a duration; after a program: a note. <pad> and <sos> never."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        ids = np.arange(len(vocab))
        notes = (ids >= vocab.note_base) & (ids < vocab.duration_base)
        durations = (ids >= vocab.duration_base) & (ids < vocab.program_base)
        programs = ids >= vocab.program_base
        others = programs | (ids == vocab.sep) | (ids == vocab.eos)  # may open a row, or end
        self._row_start = {True: others | notes, False: others}  # by Cursor.program
        self._masks = {DURATION: durations, NOTE: notes}
        self._rows: dict[tuple, np.ndarray] = {}  # what `allowed` hands out, made once per kind

    def start(self) -> Cursor:
        """Right after <sos>."""
        return Cursor(program=not self.vocab.instruments)

    def mask(self, cursor: Cursor) -> np.ndarray:
        """(V,) bool: the tokens allowed after `cursor` (read-only: shared)."""
        if cursor.expect == ROW:
            return self._row_start[cursor.program]
        if cursor.expect == END:
            raise ValueError("nothing may follow <eos>")
        return self._masks[cursor.expect]

    def _row(self, cursor: Cursor, eos: bool) -> np.ndarray:
        key = (cursor.expect, cursor.program, eos)
        if key not in self._rows:
            if cursor.expect == END:
                row = np.zeros(len(self.vocab), dtype=bool)
            else:
                row = self.mask(cursor).copy()
                row[self.vocab.eos] &= eos
            self._rows[key] = row[None]
        return self._rows[key]

    def advance(self, cursor: Cursor, token: int) -> Cursor:
        """The cursor after `token`; DecodeError if the grammar does not allow it there."""
        vocab = self.vocab
        if cursor.expect == END or not 0 <= token < len(vocab) or not self.mask(cursor)[token]:
            name = vocab.names()[token] if 0 <= token < len(vocab) else str(token)
            raise DecodeError(f"{name} cannot follow here (expected a {cursor.expect} token)")
        if token == vocab.eos:
            return dataclasses.replace(cursor, expect=END)
        if token == vocab.sep:  # a gap row; in instrument mode a note needs a program again
            program = not vocab.instruments
            return dataclasses.replace(cursor, expect=DURATION, gap=True, program=program)
        if token < vocab.duration_base:  # a note
            return dataclasses.replace(cursor, expect=DURATION, gap=False)
        if token >= vocab.program_base:
            return dataclasses.replace(cursor, expect=NOTE, program=True)
        steps = token - vocab.duration_base + 1
        return Cursor(ROW, cursor.step + steps * cursor.gap, cursor.program)

    opening = "<sos>"

    def opens(self, token: int) -> bool:
        return token == self.vocab.sos
