"""Token schemes: one small interface, one module per scheme (issue 13).

A scheme turns a song's quantized notes into rows of tokens and back. A row holds one token
per field: flat schemes (index, events, remi) have one field, MusicBox's codebook scheme three
(pitch, time since the previous onset, duration), which the model embeds and sums and predicts
with one head per field. Every row also carries the absolute step at which it sounds (for the
bar-position embedding and for cutting prompts).

What a scheme changes in the notes it is given (quantizing to a codebook, clamping) it counts
by cause, as the encode stage counts what the grid does (midi.files.NOTE_CHANGES).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from midigen.encodings.scores import DecodeError
from midigen.midi.files import Notes

NO_PEDALS = np.zeros((0, 2), dtype=np.int64)  # a song without a sustain pedal

__all__ = [
    "NO_PEDALS",
    "Cursor",
    "DecodeError",
    "Encoded",
    "Grammar",
    "Scheme",
    "SchemeGrammar",
    "decode_song",
    "one_instrument",
    "prefix_mask",
    "whole_rows",
    "whole_rows_and_cursor",
]


@dataclass(frozen=True)
class Encoded:
    """One song in a scheme: (N, F) int64 tokens, one row per time step, F fields, and the
    (N,) int64 step at which each row sounds."""

    tokens: np.ndarray
    times: np.ndarray

    @property
    def stored(self) -> np.ndarray:
        """The tokens as shards store them: (N,) for one field, (N, F) rows otherwise."""
        return self.tokens[:, 0] if self.tokens.shape[1] == 1 else self.tokens


class Scheme(Protocol):
    """What every scheme provides; pure functions of its configuration."""

    name: str

    @property
    def fields(self) -> tuple[int, ...]:
        """The vocabulary size of each field (one entry for flat schemes)."""
        ...

    def encode(self, notes: Notes, pedals: np.ndarray = NO_PEDALS) -> Encoded:
        """Rows from <sos> to <eos>. `pedals`: the song's sustain pedal spans (midi.files.Song), for
        the schemes that model the pedal (events); the others play each note as its key is
        held, as the encode stage always has."""
        ...

    def decode(self, tokens: np.ndarray) -> Notes:
        """The notes of a whole song's rows; DecodeError names the first row it cannot read."""
        ...

    def changes(
        self, notes: Notes, pedals: np.ndarray = NO_PEDALS, encoded: Encoded | None = None
    ) -> dict[str, int]:
        """How many of `notes` encode() changes or drops, by cause (0 for a lossless scheme).
        `encoded`: encode()'s result where the caller has it, so that a scheme which must decode
        to see its losses (remi) does not encode again."""
        ...

    eos_row: tuple[int, ...]  # the row that ends a song

    pitch_range: tuple[int, int]  # the pitches it can write, [low, high)

    def pitches(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where `tokens` hold a pitch (a bool mask of their shape) and those pitches: a song
        is transposed by adding the interval there (pitch ids are consecutive in every
        scheme). A scheme whose tokens cannot be moved one by one (merged ones) has none."""
        ...

    def kinds(self, tokens: np.ndarray) -> np.ndarray:
        """The type of each token (str), for the loss per type of token."""
        ...

    def note_counts(self, tokens: np.ndarray) -> np.ndarray:
        """(N,) int: the notes each row starts (bits per note divide by their sum; a learned
        token may hold several)."""
        ...

    def allowed(self, prefix: np.ndarray) -> list[np.ndarray]:
        """Per field, a bool mask of the values the next row may take after the rows `prefix`
        (none after <eos>): generation samples inside it, so every song it writes decodes."""
        ...

    @property
    def grammar(self) -> Grammar:
        """`allowed` one token at a time (flat schemes): what generation runs."""
        ...


class Cursor(Protocol):
    """A sequence's place in a scheme's grammar."""

    @property
    def step(self) -> int:
        """Where the song is: the step of its last token (`Grammar.sounds_at` the next's)."""
        ...

    @property
    def ended(self) -> bool:
        """After <eos>: nothing may follow."""
        ...


class Grammar(Protocol):
    """Which token may come next, kept up to date token by token (generation's cost per token
    must not grow with the song)."""

    def parse(self, tokens: list[int]) -> Cursor:
        """The cursor after a song's first tokens (from <sos>); DecodeError if they break it."""
        ...

    def advance(self, cursor: Cursor, token: int) -> Cursor:
        """The cursor after one more token; DecodeError if the grammar does not allow it."""
        ...

    def sounds_at(self, cursor: Cursor, token) -> int:
        """The step at which `token` sounds after `cursor` (its bar position is fed to the
        model with it): the cursor's step, but for a codebook row its own onset."""
        ...

    def may_end(self, cursor: Cursor) -> bool:
        """Whether the song could end right after `cursor` (what a cut continuation keeps)."""
        ...

    def allowed(self, cursors: list[Cursor], eos: bool = True) -> np.ndarray:
        """(B, V) bool, a row per cursor (rows of fields: (B, F, V)); `eos=False` holds <eos>
        back. Read-only and shared: the same state gives the same array (generation copies
        each once)."""
        ...


class SchemeGrammar:
    """What every scheme's grammar shares: `parse` from the opening token on, `advance` after
    advance; `allowed` stacks one mask per cursor, each made once by `_row` and then shared; a
    token sounds at the step its cursor is at (a codebook row, at its own onset, says
    otherwise); the song may end where <eos> may come next."""

    opening: str  # what a song starts with, for the message when it does not

    def start(self) -> Cursor:
        """The cursor right after a song's opening token."""
        raise NotImplementedError

    def opens(self, token) -> bool:
        """Whether `token` opens a song."""
        raise NotImplementedError

    def parse(self, tokens: list) -> Cursor:
        """The cursor after a song's first tokens; DecodeError names the first one the grammar
        does not allow."""
        if not tokens or not self.opens(tokens[0]):
            raise DecodeError(f"a song must start with {self.opening}")
        cursor = self.start()
        for token in tokens[1:]:
            cursor = self.advance(cursor, token)
        return cursor

    def allowed(self, cursors: list, eos: bool = True) -> np.ndarray:
        rows = [self._row(cursor, eos) for cursor in cursors]
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def _row(self, cursor, eos: bool) -> np.ndarray:
        """(1, ...) the mask after `cursor`, the same array for the same state."""
        raise NotImplementedError

    def sounds_at(self, cursor: Cursor, token) -> int:
        return cursor.step

    def may_end(self, cursor: Cursor) -> bool:
        """Whether the song could end right here: <eos>, the one token `eos=False` holds back,
        may come next."""
        return bool((self.allowed([cursor]) != self.allowed([cursor], eos=False)).any())


def prefix_mask(grammar: Grammar, prefix: np.ndarray, size: int, sos: int) -> np.ndarray:
    """The (size,) mask of the tokens that may follow the tokens `prefix`: <sos> when empty."""
    tokens = np.asarray(prefix, dtype=np.int64).reshape(-1).tolist()
    if not tokens:
        mask = np.zeros(size, dtype=bool)
        mask[sos] = True
        return mask
    return grammar.allowed([grammar.parse(tokens)])[0].copy()


def whole_rows(grammar: Grammar, cursor: Cursor, tokens: list[int]) -> list[int]:
    """`tokens` (drawn after `cursor`) up to the last point where the song could end: what the
    length limit may leave unfinished (a note waiting for its duration) is dropped."""
    return whole_rows_and_cursor(grammar, cursor, tokens)[0]


def whole_rows_and_cursor(
    grammar: Grammar, cursor: Cursor, tokens: list[int]
) -> tuple[list[int], Cursor]:
    """`whole_rows`, and the grammar's cursor after them (so that no one parses them again)."""
    kept, kept_cursor = 0, cursor
    for i, token in enumerate(tokens):
        cursor = grammar.advance(cursor, token)
        if cursor.ended or grammar.may_end(cursor):
            kept, kept_cursor = i + 1, cursor
    return list(tokens[:kept]), kept_cursor


def row_ids(rows: np.ndarray, fields: tuple[int, ...]) -> np.ndarray:
    """One int per row of a scheme's tokens ((N,) or (N, F)), in mixed radix over `fields`:
    rows of several fields compared, counted or matched whole."""
    rows = np.asarray(rows, dtype=np.int64)
    return np.ravel_multi_index(rows.reshape(len(rows), -1).T, fields)


def decode_song(scheme: Scheme, tokens: list) -> Notes:
    """The notes of a song's rows, with the <eos> row added when they lack it (a continuation
    the length limit stopped, cut to whole rows); DecodeError as `Scheme.decode`."""
    rows = [*tokens]
    if not rows or not scheme.grammar.parse(rows).ended:
        rows.append(scheme.eos_row if len(scheme.eos_row) > 1 else scheme.eos_row[0])
    return scheme.decode(np.array(rows, dtype=np.int64))


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
