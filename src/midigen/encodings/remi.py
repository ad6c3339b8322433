"""MidiTok's REMI, behind the scheme interface: the external reference (issue 13).

Configured to the work midigen's index score does (as bench/encode.py's like-for-like row):
positions on the same grid, durations up to max_duration steps, no velocity, every instrument
in one stream with a Program token where the program changes, duplicate notes removed, no
time signatures (REMI then assumes 4/4 bars). MidiTok is imported only when a REMI scheme is
made. Each song is framed by BOS and EOS; a token sounds at the step its grammar knows before
it (a Bar or Position token at the step of what came before it).
REMI keeps pitches 21-108 only: `changes` counts the notes a round trip does not give back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import symusic

from midigen.encodings import NO_PEDALS, DecodeError, Encoded, SchemeGrammar, prefix_mask
from midigen.errors import optional
from midigen.midi.files import Notes

NEXT = {  # token type -> the types that may follow it (a REMI song with programs, no velocity)
    "BOS": {"Bar", "EOS"},
    "Bar": {"Bar", "Position", "EOS"},
    "Position": {"Program", "Pitch"},
    "Program": {"Pitch"},
    "Pitch": {"Duration"},
    "Duration": {"Pitch", "Program", "Position", "Bar", "EOS"},
    "EOS": set(),
}


def like_for_like(steps_per_beat: int, max_duration: int, time_signatures: bool) -> dict:
    """MidiTok TokenizerConfig arguments that do the work midigen's encode does."""
    return {
        "beat_res": {(0, -(-max_duration // steps_per_beat)): steps_per_beat},
        "use_velocities": False,
        "use_programs": True,  # with one stream: every track in one sequence, like merge
        "one_token_stream_for_programs": True,
        "program_changes": True,  # a Program token only where it changes
        "remove_duplicated_notes": True,
        "use_time_signatures": time_signatures,
    }


def tokenizer_for(steps_per_beat: int, max_duration: int) -> Any:
    """The scheme's tokenizer: no time signatures, as notes come without a meter (4/4 bars)."""
    miditok = optional("miditok")  # the `remi` extra: needed for this scheme only
    return miditok.REMI(
        miditok.TokenizerConfig(**like_for_like(steps_per_beat, max_duration, False))
    )


@dataclass(frozen=True)
class Remi:
    steps_per_beat: int
    max_duration: int
    name: str = "remi"
    tokenizer: Any = field(init=False, repr=False, compare=False)
    types: list[str] = field(init=False, repr=False, compare=False)  # token id -> its type

    def __post_init__(self) -> None:
        tokenizer = tokenizer_for(self.steps_per_beat, self.max_duration)
        kinds = [""] * len(tokenizer.vocab)
        for name, i in tokenizer.vocab.items():
            kinds[i] = name.split("_")[0]
        object.__setattr__(self, "tokenizer", tokenizer)
        object.__setattr__(self, "types", kinds)

    @property
    def fields(self) -> tuple[int]:
        return (len(self.types),)

    def encode(self, notes: Notes, pedals: np.ndarray = NO_PEDALS) -> Encoded:
        sequence = self.tokenizer.encode(self._score(notes))
        sequence = sequence[0] if isinstance(sequence, list) else sequence
        vocab = self.tokenizer.vocab
        ids = [vocab["BOS_None"], *sequence.ids, vocab["EOS_None"]]
        return Encoded(np.array(ids, dtype=np.int64)[:, None], self._times(ids))

    def _times(self, ids: list[int]) -> np.ndarray:
        """The step each token sounds at, as generation knows it before the token: a Bar or a
        Position at the step of what came before it, every other token at its Position's."""
        cursor, times = self.grammar.parse(ids[:1]), [0]
        for token in ids[1:]:
            times.append(cursor.step)
            cursor = self.grammar.advance(cursor, token)
        return np.array(times, dtype=np.int64)

    def decode(self, tokens: np.ndarray) -> Notes:
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1).tolist()
        problem = self._problem(ids)
        if problem:
            raise DecodeError(problem)
        score = self.tokenizer.decode(ids)
        scale = self.steps_per_beat / score.ticks_per_quarter
        found = [
            (round(n.time * scale), track.program, n.pitch, max(1, round(n.duration * scale)))
            for track in score.tracks
            for n in track.notes
        ]
        return _notes(sorted(set(found)))

    def _problem(self, ids: list[int]) -> str | None:
        if not ids or not 0 <= ids[0] < len(self.types) or self.types[ids[0]] != "BOS":
            return "a song must start with BOS"
        for i in range(1, len(ids)):
            if not 0 <= ids[i] < len(self.types):
                return f"token {i}: {ids[i]} is not in the vocabulary"
            if self.types[ids[i]] not in NEXT.get(self.types[ids[i - 1]], set()):
                return f"token {i}: {self.types[ids[i]]} cannot follow {self.types[ids[i - 1]]}"
        if self.types[ids[-1]] != "EOS":
            return "a song must end with EOS"
        return None

    def changes(
        self, notes: Notes, pedals: np.ndarray = NO_PEDALS, encoded: Encoded | None = None
    ) -> dict[str, int]:
        back = self.decode((encoded or self.encode(notes)).tokens)
        have = Counter(zip(*(a.tolist() for a in _columns(back)), strict=True))
        lost = Counter(zip(*(a.tolist() for a in _columns(notes)), strict=True)) - have
        return {"not_given_back": sum(lost.values())}

    @property
    def eos_row(self) -> tuple[int]:
        return (self.tokenizer.vocab["EOS_None"],)

    @property
    def pitch_range(self) -> tuple[int, int]:
        low, high = self.tokenizer.config.pitch_range
        return low, high

    def pitches(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kind = np.array(self.types)[np.asarray(tokens)]
        mask = kind == "Pitch"
        return mask, np.asarray(tokens)[mask] - self.tokenizer.vocab[
            f"Pitch_{self.pitch_range[0]}"
        ] + self.pitch_range[0]

    def kinds(self, tokens: np.ndarray) -> np.ndarray:
        return np.char.lower(np.array(self.types)[np.asarray(tokens).reshape(-1)])

    def note_counts(self, tokens: np.ndarray) -> np.ndarray:
        return (np.array(self.types)[np.asarray(tokens).reshape(-1)] == "Pitch").astype(np.int64)

    @cached_property
    def grammar(self) -> RemiGrammar:
        return RemiGrammar(self)

    def allowed(self, prefix: np.ndarray) -> list[np.ndarray]:
        return [
            prefix_mask(self.grammar, prefix, len(self.types), self.tokenizer.vocab["BOS_None"])
        ]

    def _score(self, notes: Notes) -> symusic.Score:
        score = symusic.Score(self.steps_per_beat)
        for program in np.unique(notes.program).tolist():
            track = symusic.Track(program=program)
            mine = notes.program == program
            for onset, pitch, duration in zip(
                *(a[mine].tolist() for a in (notes.onset, notes.pitch, notes.duration)),
                strict=True,
            ):
                track.notes.append(symusic.Note(onset, duration, pitch, 64))
            score.tracks.append(track)
        return score


def _columns(notes: Notes) -> tuple[np.ndarray, ...]:
    return notes.onset, notes.program, notes.pitch, notes.duration


def _notes(rows: list[tuple[int, int, int, int]]) -> Notes:
    """Sorted (onset, program, pitch, duration) rows, one per (onset, program, pitch)."""
    kept = {}
    for onset, program, pitch, duration in rows:
        key = (onset, program, pitch)
        kept[key] = max(duration, kept.get(key, 0))
    columns = [np.array(c, dtype=np.int64) for c in zip(*kept, strict=True)] if kept else []
    if not columns:
        return Notes(*(np.zeros(0, dtype=np.int64) for _ in range(4)))
    durations = np.array(list(kept.values()), dtype=np.int64)
    return Notes(columns[0], columns[1], columns[2], durations)


@dataclass(frozen=True)
class RemiCursor:
    """A song's place in REMI: the last token's type, the bars begun, the last Position in the
    current bar (-1: none yet), and the step the next token sounds at."""

    kind: str = "BOS"
    bars: int = 0
    position: int = -1
    step: int = 0

    @property
    def ended(self) -> bool:
        return self.kind == "EOS"


class RemiGrammar(SchemeGrammar):
    """By token type (NEXT); a Position only later in the bar than the last one. Bars are 4/4
    (the scheme reads no time signatures), so Bar k starts at step (k - 1) * 4 * steps_per_beat."""

    def __init__(self, scheme: Remi):
        self.kinds = np.array(scheme.types)
        self.bar_steps = 4 * scheme.steps_per_beat
        self.positions = np.full(len(scheme.types), -1)  # a Position token's step in its bar
        for name, i in scheme.tokenizer.vocab.items():
            if name.startswith("Position_"):
                self.positions[i] = int(name.split("_")[1])
        self._rows: dict[tuple, np.ndarray] = {}

    opening = "BOS"

    def start(self) -> RemiCursor:
        return RemiCursor()

    def opens(self, token: int) -> bool:
        return 0 <= token < len(self.kinds) and self.kinds[token] == "BOS"

    def advance(self, cursor: RemiCursor, token: int) -> RemiCursor:
        """The cursor after `token`; DecodeError if the grammar does not allow it there."""
        if not 0 <= token < len(self.kinds) or not self.allowed([cursor])[0, token]:
            name = self.kinds[token] if 0 <= token < len(self.kinds) else str(token)
            raise DecodeError(f"{name} cannot follow {cursor.kind}")
        kind = str(self.kinds[token])
        if kind == "Bar":
            return RemiCursor(kind, cursor.bars + 1, -1, cursor.bars * self.bar_steps)
        if kind == "Position":
            step = (cursor.bars - 1) * self.bar_steps + int(self.positions[token])
            return RemiCursor(kind, cursor.bars, int(self.positions[token]), step)
        return replace(cursor, kind=kind)

    def _row(self, cursor: RemiCursor, eos: bool) -> np.ndarray:
        key = (cursor.kind, cursor.position, eos)
        if key not in self._rows:
            mask = np.isin(self.kinds, list(NEXT[cursor.kind] - (set() if eos else {"EOS"})))
            mask &= ~((self.kinds == "Position") & (self.positions <= cursor.position))
            self._rows[key] = mask[None]
        return self._rows[key]
