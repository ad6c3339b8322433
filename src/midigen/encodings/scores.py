"""The three scores of the MIDIGen encoding, and the way back.

    notes  ->  sparse score  ->  position score  ->  index score (tokens)
           <-                <-                  <-

Sparse score: an int array (step, instrument, pitch) holding the length in steps of every
note that starts there, 0 elsewhere; kept as its nonzero cells, so its size follows the notes
and not steps x instruments x 128 (`SparseScore.dense()` builds the array itself).
Position score: rows (pitch, duration, program) in time order; notes of one step sorted by
program then pitch, then a gap row (pitch -1) advancing time by `duration` steps. Gaps longer
than `max_duration` are split into several rows; the last gap reaches the end of the song.
Index score: `<sos>` then, per row, `<nP><dD>` for a note (preceded by `<iK>` when the
program changes within a step, instrument mode only) or `<sep><dD>` for a gap, then `<eos>`.
Every token also carries the absolute step at which it sounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from midigen.midi.files import Notes

GAP = -1
SPECIALS = ("<pad>", "<sos>", "<eos>", "<sep>")


class DecodeError(ValueError):
    """A token sequence that the grammar of the index score does not allow."""


@dataclass(frozen=True)
class Vocab:
    """Token ids: specials, 128 note pitches, durations 1..max_duration, [128 programs]."""

    max_duration: int
    instruments: bool = False

    pad = 0
    sos = 1
    eos = 2
    sep = 3
    note_base = len(SPECIALS)

    @property
    def duration_base(self) -> int:
        return self.note_base + 128

    @property
    def program_base(self) -> int:
        return self.duration_base + self.max_duration

    def __len__(self) -> int:
        return self.program_base + (128 if self.instruments else 0)

    def note(self, pitch):
        return self.note_base + pitch

    def duration(self, steps):
        return self.duration_base + steps - 1

    def program(self, program):
        return self.program_base + program

    def names(self) -> list[str]:
        """Human-readable name of every id, in id order (<n60>, <d4>, <i0>...)."""
        names = list(SPECIALS) + [f"<n{p}>" for p in range(128)]
        names += [f"<d{d}>" for d in range(1, self.max_duration + 1)]
        if self.instruments:
            names += [f"<i{p}>" for p in range(128)]
        return names

    def kinds(self) -> np.ndarray:
        """Per id: 0 special, 1 note, 2 duration, 3 separator, 4 program (for loss per type)."""
        kind = np.zeros(len(self), dtype=np.int8)
        kind[self.note_base : self.duration_base] = 1
        kind[self.duration_base : self.program_base] = 2
        kind[self.sep] = 3
        kind[self.program_base :] = 4
        return kind

    def to_text(self, tokens) -> str:
        names = self.names()
        return "".join(names[t] for t in tokens)

    def from_text(self, text: str) -> np.ndarray:
        ids = {name: i for i, name in enumerate(self.names())}
        parts = text.replace("><", ">\n<").split()
        try:
            return np.array([ids[p] for p in parts], dtype=np.int64)
        except KeyError as e:
            raise DecodeError(f"unknown token {e.args[0]}") from None


@dataclass(frozen=True)
class SparseScore:
    """The (step, instrument, pitch) array of note lengths by its nonzero cells, in the array's
    C order (step, then instrument, then pitch); `programs[i]` names instrument i."""

    step: np.ndarray
    instrument: np.ndarray
    pitch: np.ndarray
    length: np.ndarray
    steps: int  # the array's first dimension: the song's length
    programs: tuple[int, ...]

    @classmethod
    def from_cells(cls, step, program, pitch, length, steps: int) -> SparseScore:
        """Cells in any order; of two on one (step, program, pitch), the later one wins (as
        when writing them into the array one after the other)."""
        programs = np.unique(program)
        instrument = np.searchsorted(programs, program)
        order = np.lexsort((pitch, instrument, step))  # stable: equal cells keep their order
        keys = np.stack([step, instrument, pitch], axis=1)[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = (keys[1:] != keys[:-1]).any(axis=1)
        kept = order[last]
        return cls(
            *(np.asarray(a, dtype=np.int64)[kept] for a in (step, instrument, pitch, length)),
            steps=int(steps),
            programs=tuple(int(p) for p in programs),
        )

    def dense(self) -> np.ndarray:
        """The array itself (steps x instruments x 128): for small songs and for reading."""
        array = np.zeros((self.steps, max(len(self.programs), 1), 128), dtype=np.int64)
        array[self.step, self.instrument, self.pitch] = self.length
        return array


# ---- forward: notes -> sparse -> position -> index -------------------------------------------


def notes_to_sparse(notes: Notes) -> SparseScore:
    return SparseScore.from_cells(
        notes.onset, notes.program, notes.pitch, notes.duration, notes.end
    )


def sparse_to_position(sparse: SparseScore, max_duration: int) -> np.ndarray:
    """Rows (pitch, duration, program): the notes of each step, then gap rows to the next."""
    step, pitch, duration = sparse.step, sparse.pitch, sparse.length  # sorted (step, instr, pitch)
    program = np.asarray(sparse.programs, dtype=np.int64)[sparse.instrument] if len(step) else step
    total = sparse.steps

    onsets = np.unique(step)
    if len(onsets) == 0 or onsets[0] > 0:
        onsets = np.concatenate([[0], onsets])
    gap_start = onsets
    gap = np.diff(np.append(onsets, total))
    pieces = -(-gap // max_duration)  # ceil: gaps longer than max_duration are split
    piece_start = np.repeat(gap_start, pieces)
    piece_index = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    piece_len = np.minimum(max_duration, np.repeat(gap, pieces) - piece_index * max_duration)

    # Interleave: at each step its notes (kind 0) come before its gap pieces (kind 1).
    rows_step = np.concatenate([step, piece_start])
    rows_kind = np.concatenate([np.zeros(len(step)), np.ones(len(piece_start))])
    rows_order = np.concatenate([np.arange(len(step)), piece_index])
    order = np.lexsort((rows_order, rows_kind, rows_step))
    pitch_col = np.concatenate([pitch, np.full(len(piece_start), GAP)])
    duration_col = np.concatenate([duration, piece_len])
    program_col = np.concatenate([program, np.full(len(piece_start), GAP)])
    return np.stack([pitch_col, duration_col, program_col], axis=1)[order].astype(np.int64)


def position_to_index(position: np.ndarray, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and the absolute step of each token (`<eos>` carries the song's length)."""
    pitch, duration, program = position.T
    is_note = pitch != GAP
    row_step = np.concatenate([[0], np.cumsum(np.where(is_note, 0, duration))])
    total, row_step = row_step[-1], row_step[:-1]

    first = np.where(is_note, vocab.note(pitch), vocab.sep)
    second = vocab.duration(duration)
    if vocab.instruments:
        # An instrument token opens every run of same-program notes within a step.
        previous_program = np.concatenate([[GAP], program[:-1]])
        previous_is_note = np.concatenate([[False], is_note[:-1]])
        needs_program = is_note & ~(previous_is_note & (previous_program == program))
    else:
        needs_program = np.zeros(len(pitch), dtype=bool)

    per_row = 2 + needs_program
    starts = np.concatenate([[1], 1 + np.cumsum(per_row)[:-1]])
    tokens = np.empty(int(per_row.sum()) + 2, dtype=np.int64)
    times = np.empty_like(tokens)
    tokens[0], times[0] = vocab.sos, 0
    tokens[-1], times[-1] = vocab.eos, total
    tokens[starts[needs_program]] = vocab.program(program[needs_program])
    tokens[starts + needs_program] = first
    tokens[starts + needs_program + 1] = second
    times[1:-1] = np.repeat(row_step, per_row)
    return tokens, times


def encode_notes(notes: Notes, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """notes -> sparse -> position -> index, the whole forward path."""
    position = sparse_to_position(notes_to_sparse(notes), vocab.max_duration)
    return position_to_index(position, vocab)


# ---- backward: index -> position -> sparse -> notes ------------------------------------------


def index_to_position(tokens, vocab: Vocab) -> np.ndarray:
    """Parse tokens back into position rows; DecodeError names the first invalid token."""
    tokens = [int(t) for t in tokens]
    if not tokens or tokens[0] != vocab.sos:
        raise DecodeError("a song must start with <sos>")
    if tokens[-1] != vocab.eos:
        raise DecodeError("a song must end with <eos>")
    names = vocab.names()
    rows: list[tuple[int, int, int]] = []
    program = None if vocab.instruments else 0
    i, end = 1, len(tokens) - 1
    while i < end:
        token = tokens[i]
        if vocab.instruments and vocab.program_base <= token < len(vocab):
            program = token - vocab.program_base
            i += 1
            continue
        if token == vocab.sep:
            pitch = GAP
        elif vocab.note_base <= token < vocab.duration_base:
            if program is None:
                raise DecodeError(f"token {i} {names[token]}: note before any instrument token")
            pitch = token - vocab.note_base
        else:
            name = names[token] if 0 <= token < len(names) else str(token)
            raise DecodeError(f"token {i} {name}: expected a note or <sep>")
        duration_token = tokens[i + 1] if i + 1 < end else None
        if duration_token is None or not vocab.duration_base <= duration_token < vocab.program_base:
            raise DecodeError(f"token {i + 1}: a duration must follow {names[token]}")
        duration = duration_token - vocab.duration_base + 1
        rows.append((pitch, duration, GAP if pitch == GAP else program))
        if pitch == GAP and vocab.instruments:
            program = None
        i += 2
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def position_to_sparse(position: np.ndarray) -> SparseScore:
    pitch, duration, program = position.T
    is_note = pitch != GAP
    step = np.concatenate([[0], np.cumsum(np.where(is_note, 0, duration))])[:-1]
    total = max(np.where(is_note, 0, duration).sum(), (step + duration)[is_note].max(initial=0))
    return SparseScore.from_cells(
        step[is_note], program[is_note], pitch[is_note], duration[is_note], total
    )


def sparse_to_notes(sparse: SparseScore) -> Notes:
    program = np.asarray(sparse.programs, dtype=np.int64)[sparse.instrument]
    return Notes(sparse.step, program.reshape(-1).astype(np.int64), sparse.pitch, sparse.length)


def decode_tokens(tokens, vocab: Vocab) -> Notes:
    """index -> position -> sparse -> notes, the whole way back."""
    return sparse_to_notes(position_to_sparse(index_to_position(tokens, vocab)))
