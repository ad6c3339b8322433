"""MidiTok's REMI, behind the scheme interface: the external reference (issue 13).

Configured to the work midigen's index score does (as bench/encode.py's like-for-like row):
positions on the same grid, durations up to max_duration steps, no velocity, every instrument
in one stream with a Program token where the program changes, duplicate notes removed, no
time signatures (REMI then assumes 4/4 bars). MidiTok is imported only when a REMI scheme is
made. Each song is framed by BOS and EOS; a token sounds at its MidiTok event's time.
REMI keeps pitches 21-108 only: `changes` counts the notes a round trip does not give back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import symusic

from midigen.encodings import NO_PEDALS, DecodeError, Encoded
from midigen.midi import Notes

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
    from miditok import REMI, TokenizerConfig  # an optional dependency: only for this scheme

    return REMI(TokenizerConfig(**like_for_like(steps_per_beat, max_duration, False)))


@dataclass(frozen=True)
class Remi:
    steps_per_beat: int
    max_duration: int
    name: str = "remi"
    tokenizer: Any = field(init=False, repr=False, compare=False)
    kinds: list[str] = field(init=False, repr=False, compare=False)  # token id -> its type

    def __post_init__(self) -> None:
        tokenizer = tokenizer_for(self.steps_per_beat, self.max_duration)
        kinds = [""] * len(tokenizer.vocab)
        for name, i in tokenizer.vocab.items():
            kinds[i] = name.split("_")[0]
        object.__setattr__(self, "tokenizer", tokenizer)
        object.__setattr__(self, "kinds", kinds)

    @property
    def fields(self) -> tuple[int]:
        return (len(self.kinds),)

    def encode(self, notes: Notes, pedals: np.ndarray = NO_PEDALS) -> Encoded:
        sequence = self.tokenizer.encode(self._score(notes))
        sequence = sequence[0] if isinstance(sequence, list) else sequence
        vocab = self.tokenizer.vocab
        ids = [vocab["BOS_None"], *sequence.ids, vocab["EOS_None"]]
        times = [0, *(event.time for event in sequence.events), notes.end]
        return Encoded(np.array(ids, dtype=np.int64)[:, None], np.array(times, dtype=np.int64))

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
        if not ids or not 0 <= ids[0] < len(self.kinds) or self.kinds[ids[0]] != "BOS":
            return "a song must start with BOS"
        for i in range(1, len(ids)):
            if not 0 <= ids[i] < len(self.kinds):
                return f"token {i}: {ids[i]} is not in the vocabulary"
            if self.kinds[ids[i]] not in NEXT.get(self.kinds[ids[i - 1]], set()):
                return f"token {i}: {self.kinds[ids[i]]} cannot follow {self.kinds[ids[i - 1]]}"
        if self.kinds[ids[-1]] != "EOS":
            return "a song must end with EOS"
        return None

    def changes(self, notes: Notes, pedals: np.ndarray = NO_PEDALS) -> dict[str, int]:
        back = self.decode(self.encode(notes).tokens)
        have = Counter(zip(*(a.tolist() for a in _columns(back)), strict=True))
        lost = Counter(zip(*(a.tolist() for a in _columns(notes)), strict=True)) - have
        return {"not_given_back": sum(lost.values())}

    def note_counts(self, tokens: np.ndarray) -> np.ndarray:
        kinds = [self.kinds[t] for t in np.asarray(tokens).reshape(-1)]
        return np.array([kind == "Pitch" for kind in kinds], dtype=np.int64)

    def allowed(self, prefix: np.ndarray) -> list[np.ndarray]:
        """By token type (NEXT); a Position only later in the bar than the last one."""
        ids = np.asarray(prefix, dtype=np.int64).reshape(-1).tolist()
        kinds = np.array(self.kinds)
        if not ids:
            return [kinds == "BOS"]
        mask = np.isin(kinds, list(NEXT[self.kinds[ids[-1]]]))
        since_bar = ids[len(ids) - ids[::-1].index(self._bar) :] if self._bar in ids else []
        positions = [p for p in since_bar if self.kinds[p] == "Position"]
        if positions:
            mask &= ~((kinds == "Position") & (np.arange(len(kinds)) <= max(positions)))
        return [mask]

    @property
    def _bar(self) -> int:
        return self.tokenizer.vocab["Bar_None"]

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
