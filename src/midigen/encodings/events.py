"""Performance-RNN events (seed 004): NOTE_ON, NOTE_OFF, TIME_SHIFT, VELOCITY, on the grid.

    <sos>  then per step with events: NOTE_OFF of the notes ending there, the pedal (explicit
    mode), VELOCITY when the next note's bin differs from the last one written, NOTE_ON of the
    notes starting there (pitch order); TIME_SHIFT s (1..max_shift steps) between such steps
    and up to the song's end;  <eos>

Time is in grid steps (the milliseconds of the original need tempo-mapped note times, which
the encode stage quantizes away: not built). Instruments are merged (the scheme has no program
token; of two notes on one onset and key the longer is kept, and a note still sounding when
its key strikes again is cut there). Velocities fall into `velocity_bins` equal bins of 1..127
(0: no VELOCITY tokens) and decode to the bin's middle. The sustain pedal, in one of three
modes: "ignore" (notes end at their key release), "extend" (a note released while the pedal
is down sounds until the pedal goes up, or its key strikes again; no pedal tokens), or
"explicit" (SUSTAIN_ON / SUSTAIN_OFF tokens, and decode extends the notes as "extend" does).
`changes` counts what each of these does to the notes it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from midigen.encodings import (
    NO_PEDALS,
    DecodeError,
    Encoded,
    SchemeGrammar,
    one_instrument,
    prefix_mask,
)
from midigen.midi.files import Notes, end_overlaps

SUSTAIN_MODES = ("ignore", "extend", "explicit")
PAD, SOS, EOS = 0, 1, 2
NOTE_ON = 3  # + pitch
NOTE_OFF = NOTE_ON + 128  # + pitch
TIME_SHIFT = NOTE_OFF + 128  # + steps - 1
OFF, PEDAL, ON = range(3)  # the order of a step's events


@dataclass(frozen=True)
class Events:
    max_shift: int  # longest TIME_SHIFT, in steps
    velocity_bins: int  # 0: no VELOCITY tokens
    sustain: str  # one of SUSTAIN_MODES
    name: str = "events"

    def __post_init__(self) -> None:
        if self.max_shift < 1 or not 0 <= self.velocity_bins <= 127:
            raise ValueError("events need max_shift >= 1 and 0..127 velocity bins")
        if self.sustain not in SUSTAIN_MODES:
            raise ValueError(f"sustain must be one of {SUSTAIN_MODES} (got {self.sustain!r})")

    @property
    def velocity_base(self) -> int:
        return TIME_SHIFT + self.max_shift

    @property
    def sustain_on(self) -> int:
        return self.velocity_base + self.velocity_bins

    @property
    def fields(self) -> tuple[int]:
        return (self.sustain_on + (2 if self.sustain == "explicit" else 0),)

    # -- notes -> events -----------------------------------------------------------------------

    def encode(self, notes: Notes, pedals: np.ndarray = NO_PEDALS) -> Encoded:
        step, kind, value, velocity = self._events(notes, pedals)
        on = kind == ON
        bins = self._bins(velocity)
        previous_bin = np.full(len(bins), -1)
        on_index = np.flatnonzero(on)
        previous_bin[on_index[1:]] = bins[on_index[:-1]]
        needs_velocity = on & (bins != previous_bin) if self.velocity_bins else on & False
        gap = np.diff(step, prepend=0)
        shifts = -(-gap // self.max_shift)  # TIME_SHIFT tokens before each event
        count = shifts + needs_velocity + 1
        first = 1 + np.cumsum(count) - count  # slot of each event's first token (after <sos>)
        tokens = np.empty(int(count.sum()) + 2, dtype=np.int64)
        times = np.empty_like(tokens)
        tokens[0], times[0] = SOS, 0
        tokens[-1], times[-1] = EOS, step[-1] if len(step) else 0

        owner = np.repeat(np.arange(len(step)), shifts)  # the event each shift comes before
        k = np.arange(len(owner)) - np.repeat(np.cumsum(shifts) - shifts, shifts)
        last = k == shifts[owner] - 1
        size = np.where(last, gap[owner] - k * self.max_shift, self.max_shift)
        tokens[first[owner] + k] = TIME_SHIFT + size - 1
        times[first[owner] + k] = step[owner] - gap[owner] + k * self.max_shift

        where = first[needs_velocity] + shifts[needs_velocity]
        tokens[where], times[where] = (
            self.velocity_base + bins[needs_velocity],
            step[needs_velocity],
        )
        where = first + shifts + needs_velocity
        tokens[where] = np.select(
            [kind == OFF, kind == PEDAL],
            [NOTE_OFF + value, self.sustain_on + 1 - value],
            NOTE_ON + value,
        )
        times[where] = step
        return Encoded(tokens[:, None], times)

    def _events(self, notes: Notes, pedals: np.ndarray) -> tuple[np.ndarray, ...]:
        """(step, kind, value, velocity) of every event in the order written: by step, then
        NOTE_OFF, the pedal (up before down), NOTE_ON; keys in pitch order."""
        onset, pitch, duration, velocity = self._notes(notes, pedals)
        zeros = np.zeros(len(onset), dtype=np.int64)
        columns = [
            (onset, np.full(len(onset), ON), pitch, velocity),
            (onset + duration, zeros + OFF, pitch, zeros),
        ]
        if self.sustain == "explicit":
            spans = np.asarray(pedals, dtype=np.int64).reshape(-1, 2)
            none = np.zeros(len(spans), dtype=np.int64)
            columns += [(spans[:, 0], none + PEDAL, none + 1, none)]
            columns += [(spans[:, 1], none + PEDAL, none, none)]
        joined = (np.concatenate(c).astype(np.int64) for c in zip(*columns, strict=True))
        step, kind, value, vel = joined
        order = np.lexsort((value, kind, step))
        return step[order], kind[order], value[order], vel[order]

    def _notes(self, notes: Notes, pedals: np.ndarray) -> tuple[np.ndarray, ...]:
        """Onset, pitch, duration and velocity of what the events write: instruments merged,
        restrikes cut, and in "extend" mode the pedal's sustain applied."""
        onset, pitch, duration, velocity = _one_instrument(notes)
        duration = end_overlaps(onset, np.zeros_like(onset), pitch, duration)
        if self.sustain == "extend":
            duration = sustained(onset, pitch, duration, pedals)
        return onset, pitch, duration, velocity

    def _bins(self, velocity: np.ndarray) -> np.ndarray:
        """The bin of each velocity 1..127 (0 and above 127 count as 1 and 127)."""
        velocity = np.clip(np.asarray(velocity, dtype=np.int64), 1, 127)
        return (velocity - 1) * max(self.velocity_bins, 1) // 127

    def _velocity_of(self, bin_: int) -> int:
        """The middle velocity of a bin (the lower of two middles)."""
        low = -(-bin_ * 127 // self.velocity_bins)  # v - 1 from here...
        high = -(-(bin_ + 1) * 127 // self.velocity_bins) - 1  # ...to here
        return 1 + (low + high) // 2

    # -- events -> notes -----------------------------------------------------------------------

    def decode(self, tokens: np.ndarray) -> Notes:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1).tolist()
        if not tokens or tokens[0] != SOS:
            raise DecodeError("a song must start with <sos>")
        if tokens[-1] != EOS:
            raise DecodeError("a song must end with <eos>")
        now, velocity, sounding = 0, 64, {}
        rows, downs, ups = [], [], []
        for i, token in enumerate(tokens[1:-1], start=1):
            if NOTE_ON <= token < NOTE_OFF:
                pitch = token - NOTE_ON
                if pitch in sounding:
                    rows.append(_ended(sounding.pop(pitch), pitch, now))
                sounding[pitch] = (now, velocity)
            elif NOTE_OFF <= token < TIME_SHIFT:
                start = sounding.pop(token - NOTE_OFF, None)
                if start is not None:
                    rows.append(_ended(start, token - NOTE_OFF, now))
            elif TIME_SHIFT <= token < self.velocity_base:
                now += token - TIME_SHIFT + 1
            elif self.velocity_base <= token < self.sustain_on:
                velocity = self._velocity_of(token - self.velocity_base)
            elif token in (self.sustain_on, self.sustain_on + 1) and self.sustain == "explicit":
                (downs if token == self.sustain_on else ups).append(now)
            else:
                raise DecodeError(f"token {i}: {token} is not an event here")
        rows += [_ended(start, pitch, now) for pitch, start in sounding.items()]
        return self._sounding(rows, _spans(downs, ups, now))

    def _sounding(self, rows: list[tuple[int, int, int, int]], pedals: np.ndarray) -> Notes:
        """Notes from decoded (onset, pitch, duration, velocity) rows: one per onset and key,
        the pedal applied in explicit mode."""
        onset, pitch, duration, velocity = np.array(rows, dtype=np.int64).reshape(-1, 4).T
        kept = one_instrument(Notes(onset, np.zeros_like(onset), pitch, duration, velocity))
        if self.sustain == "explicit":
            duration = sustained(kept.onset, kept.pitch, kept.duration, pedals)
        else:
            duration = kept.duration
        velocity = kept.velocity if self.velocity_bins else None
        return Notes(kept.onset, kept.program, kept.pitch, duration, velocity)

    # -- what it changes, its grammar ------------------------------------------------------------

    def changes(
        self, notes: Notes, pedals: np.ndarray = NO_PEDALS, encoded: Encoded | None = None
    ) -> dict[str, int]:
        onset, pitch, duration, velocity = _one_instrument(notes)
        cut = end_overlaps(onset, np.zeros_like(onset), pitch, duration)
        held = sustained(onset, pitch, cut, pedals)
        if self.velocity_bins:
            binned = np.array([self._velocity_of(b) for b in self._bins(velocity).tolist()])
            velocity_binned = int(np.count_nonzero(binned != velocity))
        else:
            velocity_binned = len(onset)  # every velocity dropped
        ignored = self.sustain == "ignore"
        return {
            "merged_instruments": len(notes) - len(onset),
            "cut_restrike": int(np.count_nonzero(cut < duration)),
            "velocity_binned": velocity_binned,
            "sustain_ignored": int(np.count_nonzero(held > cut)) if ignored else 0,
            "sustain_extended": 0 if ignored else int(np.count_nonzero(held > cut)),
        }  # fmt: skip

    eos_row = (EOS,)
    pitch_range = (0, 128)

    def pitches(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.asarray(tokens)
        keys = (tokens >= NOTE_ON) & (tokens < TIME_SHIFT)
        return keys, (tokens[keys] - NOTE_ON) % 128

    def kinds(self, tokens: np.ndarray) -> np.ndarray:
        starts = [NOTE_ON, NOTE_OFF, TIME_SHIFT, self.velocity_base, self.sustain_on]
        names = np.array(["eos", "note_on", "note_off", "time_shift", "velocity", "sustain"])
        return names[np.searchsorted(starts, np.asarray(tokens).reshape(-1), side="right")]

    def note_counts(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens).reshape(-1)
        return ((tokens >= NOTE_ON) & (tokens < NOTE_OFF)).astype(np.int64)

    @cached_property
    def grammar(self) -> EventGrammar:
        return EventGrammar(self)

    def allowed(self, prefix: np.ndarray) -> list[np.ndarray]:
        return [prefix_mask(self.grammar, prefix, self.fields[0], SOS)]


@dataclass(frozen=True)
class EventCursor:
    """A song's place in the event grammar: the step its next event sounds at, the keys
    sounding, the pedal (explicit mode)."""

    step: int = 0
    sounding: frozenset[int] = frozenset()
    pedal_down: bool = False
    ended: bool = False


class EventGrammar(SchemeGrammar):
    """After <sos>: NOTE_ON of a silent key, NOTE_OFF of a sounding one, any shift, any
    velocity, the pedal (explicit mode) down when up and up when down, or <eos>."""

    def __init__(self, scheme: Events):
        self.scheme = scheme
        self._rows: dict[tuple, np.ndarray] = {}  # handed out once per state, then shared

    opening = "<sos>"

    def start(self) -> EventCursor:
        return EventCursor()

    def opens(self, token: int) -> bool:
        return token == SOS

    def advance(self, cursor: EventCursor, token: int) -> EventCursor:
        """The cursor after `token`; DecodeError if the grammar does not allow it there."""
        if cursor.ended or not 0 <= token < self.scheme.fields[0]:
            raise DecodeError(f"token {token} cannot follow here")
        if not self.allowed([cursor])[0, token]:
            raise DecodeError(f"token {token} cannot follow here")
        if token == EOS:
            return replace(cursor, ended=True)
        if NOTE_ON <= token < NOTE_OFF:
            return replace(cursor, sounding=cursor.sounding | {token - NOTE_ON})
        if NOTE_OFF <= token < TIME_SHIFT:
            return replace(cursor, sounding=cursor.sounding - {token - NOTE_OFF})
        if TIME_SHIFT <= token < self.scheme.velocity_base:
            return replace(cursor, step=cursor.step + token - TIME_SHIFT + 1)
        if token >= self.scheme.sustain_on:
            return replace(cursor, pedal_down=token == self.scheme.sustain_on)
        return cursor  # a velocity

    def _row(self, cursor: EventCursor, eos: bool) -> np.ndarray:
        key = (cursor.sounding, cursor.pedal_down, cursor.ended, eos)
        if key not in self._rows:
            scheme = self.scheme
            mask = np.zeros(scheme.fields[0], dtype=bool)
            if not cursor.ended:
                sounding = np.zeros(128, dtype=bool)
                sounding[list(cursor.sounding)] = True
                mask[NOTE_ON:NOTE_OFF] = ~sounding
                mask[NOTE_OFF:TIME_SHIFT] = sounding
                mask[TIME_SHIFT : scheme.sustain_on] = True
                mask[EOS] = eos
                if scheme.sustain == "explicit":
                    mask[scheme.sustain_on + cursor.pedal_down] = True
            self._rows[key] = mask[None]
        return self._rows[key]


def sustained(
    onset: np.ndarray, pitch: np.ndarray, duration: np.ndarray, pedals: np.ndarray
) -> np.ndarray:
    """Durations with the pedal applied: a note released while the pedal is down sounds until
    it goes up, but never past the next strike of its key."""
    end = onset + duration
    for down, up in np.asarray(pedals).reshape(-1, 2).tolist():
        end = np.where((end > down) & (end < up), up, end)
    extended = end - onset
    return end_overlaps(onset, np.zeros_like(onset), pitch, np.maximum(extended, duration))


def _one_instrument(notes: Notes) -> tuple[np.ndarray, ...]:
    """Onset, pitch, duration and velocity (64 where the notes have none) of the notes kept
    with instruments merged."""
    kept = one_instrument(notes)
    velocity = np.full(len(kept), 64) if kept.velocity is None else kept.velocity
    return kept.onset, kept.pitch, kept.duration, np.asarray(velocity, dtype=np.int64)


def _ended(start: tuple[int, int], pitch: int, now: int) -> tuple[int, int, int, int]:
    """A decoded note (onset, pitch, duration, velocity): at least one step long."""
    onset, velocity = start
    return onset, pitch, max(1, now - onset), velocity


def _spans(downs: list[int], ups: list[int], end: int) -> np.ndarray:
    """Pedal spans from the decoded presses and releases (a press still down ends at `end`)."""
    spans, down = [], None
    for step, is_down in sorted([(d, 1) for d in downs] + [(u, 0) for u in ups]):
        if is_down and down is None:
            down = step
        elif not is_down and down is not None:
            spans.append((down, step))
            down = None
    if down is not None:
        spans.append((down, end))
    return np.array(spans, dtype=np.int64).reshape(-1, 2)
