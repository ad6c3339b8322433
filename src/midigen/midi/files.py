"""MIDI in and out, on the beat grid.

Files are parsed with symusic (a C++ parser, ~10k files/s, meta events from any track).
Time is quantized from MIDI ticks, not seconds: a beat is `ticks_per_quarter` ticks whatever
the tempo, so tempo changes never move notes off the grid.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import symusic

from midigen.midi.lenient import (
    HEADER_BYTES,
    REPAIRS,
    Layout,
    Unreadable,
    may_resume_running_status,
    read_leniently,
)


class SkipSong(Exception):
    """This file cannot be encoded; `reason` is a short tag for the errors file."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def read_capped(path: Path, max_bytes: int) -> bytes:
    """A file's bytes, read only when it is a regular file of at most `max_bytes`, else
    SkipSong: reading a FIFO would block, a huge file would fill memory."""
    try:
        info = path.stat()
    except OSError as e:
        raise SkipSong("unreadable", e.strerror or str(e)) from None
    if not stat.S_ISREG(info.st_mode):
        raise SkipSong("not_a_file", "not a regular file (a FIFO, device or folder)")
    if info.st_size > max_bytes:
        raise SkipSong("too_large", f"{info.st_size} bytes > {max_bytes}")
    try:
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)  # + 1: parse's size check sees a file that grew
    except OSError as e:
        raise SkipSong("unreadable", e.strerror or str(e)) from None


@dataclass(frozen=True)
class Limits:
    """Size checks applied before any per-song array is allocated."""

    max_file_bytes: int
    max_notes: int
    max_steps: int


@dataclass(frozen=True)
class Notes:
    """Quantized notes of one song as parallel arrays, sorted by (onset, program, pitch).

    At most one note per (onset, program, pitch): where a file has several, the longest wins.
    """

    onset: np.ndarray  # int64 steps from the start
    program: np.ndarray  # int64 General MIDI program, 0 when instruments are merged
    pitch: np.ndarray  # int64 0..127
    duration: np.ndarray  # int64 steps, 1..max_duration
    velocity: np.ndarray | None = None  # int64 1..127 where the file said (read_song does)

    def __len__(self) -> int:
        return len(self.onset)

    @property
    def end(self) -> int:
        """First step after the last sounding note (the song's length in steps)."""
        return int((self.onset + self.duration).max()) if len(self) else 0

    def equals(self, other: Notes) -> bool:
        return all(
            np.array_equal(getattr(self, f), getattr(other, f))
            for f in ("onset", "program", "pitch", "duration")
        )


# What quantizing does to a file's notes, by cause: the first three drop notes, the rest change
# a kept note's length. Counted per file (songs.csv), summed in stats.json, shown in the report.
NOTE_CHANGES = (
    "drums",  # on the drum channel: dropped (the encoding has no drum kit)
    "duplicate",  # same tick, key and instrument as another note (doubled tracks, re-struck
    # note-ons; instruments merged: voices in unison): one kept, the longest
    "merged",  # a different tick but the same step, key and instrument: merged by the grid
    "zero_length",  # lasted 0 ticks: stretched to one step
    "stretched",  # shorter than half a step: stretched to one step
    "cut_max_duration",  # longer than encode.max_duration steps: cut there
    "cut_restrike",  # still sounding when its key strikes again: cut there
)
DROPPED = NOTE_CHANGES[:3]
# How a file was read when it broke a rule, per file (songs.csv) and summed (stats.json).
FILE_REPAIRS = (
    "smpte",  # SMPTE time division: read on a 120-bpm beat grid (1 if so)
    "sequences",  # type 2: its independent sequences, played one after another
    "lenient",  # symusic refused or misread it; read by the lenient reader (1 if so)
    *REPAIRS,  # the lenient reader's repairs: data bytes clipped to 127, undefined status
    # bytes or senseless meta events skipped, running status carried over sysex/meta
    "meter_ignored",  # time signatures on a later track than the first holding any: ignored
)


@dataclass(frozen=True)
class Song:
    """A file's quantized notes, its meter, and what quantizing dropped or changed."""

    notes: Notes
    meter: Meter
    changes: dict[str, int]  # by cause, every key of NOTE_CHANGES
    repairs: dict[str, int]  # every key of FILE_REPAIRS
    pedals: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    # (K, 2) int64 steps [down, up) of the sustain pedal, any non-drum track (`sustain_pedals`)
    tempos: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    # (K, 2) the tempo map: step where a tempo starts, quarter notes per minute (`tempo_map`)
    program: int = 0  # the program most of the file's non-drum notes play (`main_program`)

    @property
    def notes_read(self) -> int:
        """Notes the file held (drums included)."""
        return len(self.notes) + self.dropped

    @property
    def dropped(self) -> int:
        return sum(self.changes[cause] for cause in DROPPED)


@dataclass(frozen=True)
class Meter:
    """Bar lengths over time: bar `k` of the map starts at `start[k]` and lasts `length[k]`."""

    start: np.ndarray  # int64 steps, strictly increasing, start[0] == 0
    length: np.ndarray  # int64 steps per bar (>= 1)

    @classmethod
    def constant(cls, bar_steps: int) -> Meter:
        """Bars of `bar_steps` steps throughout."""
        return cls(np.array([0]), np.array([bar_steps]))

    def bar_position(self, steps: np.ndarray) -> np.ndarray:
        """Step within its bar for every absolute step (for bar/beat embeddings)."""
        k = np.searchsorted(self.start, steps, side="right") - 1
        return (steps - self.start[k]) % self.length[k]


def _to_steps(ticks: np.ndarray, tpq: int, steps_per_beat: int) -> np.ndarray:
    """Round ticks to the nearest step (halves round up), in exact integer arithmetic."""
    return (2 * ticks.astype(np.int64) * steps_per_beat + tpq) // (2 * tpq)


def parse(data: bytes, limits: Limits) -> tuple[symusic.Score, dict[str, int]]:
    """Parse MIDI bytes into a score and the count of each FILE_REPAIRS; SkipSong where
    nothing can read them. SMPTE time is read on a 120-bpm beat grid, the independent
    sequences of a type-2 file are played one after another, a file symusic refuses (or
    misreads: running status over a sysex) goes through the lenient reader, and only the
    first track holding time signatures sets the meter."""
    if len(data) > limits.max_file_bytes:
        raise SkipSong("too_large", f"{len(data)} bytes > {limits.max_file_bytes}")
    if len(data) == 0:
        raise SkipSong("empty", "file has 0 bytes")
    data = _unwrap_rmid(data)
    if not data.startswith(b"MThd"):
        raise SkipSong("not_midi", "no MIDI header (MThd)")
    if len(data) < HEADER_BYTES:
        raise SkipSong("corrupt", f"the file ends inside its header ({len(data)} bytes)")
    repairs = dict.fromkeys(FILE_REPAIRS, 0)
    if data[12] & 0x80:
        data, repairs["smpte"] = _smpte_as_beats(data), 1
    try:
        if int.from_bytes(data[8:10], "big") == 2:
            return _sequences(Layout.of(data), repairs), repairs
        score = _read(data, repairs)
        _first_meter_track(score, data, repairs)
    except Unreadable as e:
        raise SkipSong("corrupt", str(e)) from None
    return score, repairs


def _read(data: bytes, repairs: dict[str, int]) -> symusic.Score:
    """symusic's reading, or the lenient reader's where symusic refuses the file or where it
    carried running status over a sysex (which symusic misreads without a word)."""
    try:
        score, refusal = symusic.Score.from_midi(data), ""
    except Exception as e:  # the C++ parser reports every malformation as some exception
        score, refusal = None, str(e).splitlines()[0][:200]
    if score is not None and not may_resume_running_status(data):
        return score
    try:
        clean, fixes = read_leniently(Layout.of(data))
    except Unreadable as e:
        if score is not None:
            return score
        raise Unreadable(f"{refusal}; read leniently: {e}") from None
    if score is not None and not fixes["running_status_resumed"]:
        return score
    try:
        repaired = symusic.Score.from_midi(clean)
    except Exception as e:
        raise Unreadable(f"{refusal}; read leniently: {str(e).splitlines()[0][:200]}") from None
    repairs.update(fixes, lenient=1)
    return repaired


def _smpte_as_beats(data: bytes) -> bytes:
    """The file with its SMPTE division (frames per second x ticks per frame) replaced by
    ticks per quarter at 120 bpm, MIDI's default tempo: a beat is half a second."""
    fps = {0xE8: 24, 0xE7: 25, 0xE3: 29.97, 0xE2: 30}.get(data[12], 256 - data[12])
    per_quarter = min(max(round(fps * data[13] / 2), 1), 0x7FFF)
    return data[:12] + per_quarter.to_bytes(2, "big") + data[14:]


def _sequences(layout: Layout, repairs: dict[str, int]) -> symusic.Score:
    """A type-2 file's sequences (one per track) played one after another, as one score."""
    whole = symusic.Score(layout.division)
    start = 0
    for body in layout.tracks:
        part = _read(layout.to_bytes([body], fmt=0), repairs).shift_time(start)
        whole.tracks.extend(part.tracks)
        whole.time_signatures.extend(part.time_signatures)
        start = max(start, part.end())
    repairs["sequences"] = len(layout.tracks)
    return whole


def _first_meter_track(score: symusic.Score, data: bytes, repairs: dict[str, int]) -> None:
    """Keep the time signatures of the first track that has any (the conductor track of a
    type-1 file); those on later tracks that differ are dropped and counted. Without this,
    two tracks that disagree by a tick would restart the bar at whichever came last."""
    if len({(t.time, t.numerator, t.denominator) for t in score.time_signatures}) < 2:
        return  # one signature, however many tracks repeat it: nothing to disagree about
    per_track, layout = [], Layout.of(data)
    for body in layout.tracks:
        try:
            one = symusic.Score.from_midi(layout.to_bytes([body], fmt=0))
        except Exception:  # a track that cannot stand alone: its signatures are in `score`
            continue
        per_track.append({(t.time, t.numerator, t.denominator) for t in one.time_signatures})
    chosen = next((s for s in per_track if s), set())
    others = set().union(*per_track) - chosen if per_track else set()
    if not chosen or not others:
        return
    repairs["meter_ignored"] = len(others)
    kept = [t for t in score.time_signatures if (t.time, t.numerator, t.denominator) in chosen]
    score.time_signatures.clear()
    score.time_signatures.extend(kept)


def _unwrap_rmid(data: bytes) -> bytes:
    """The standard MIDI file inside a RIFF 'RMID' container (.rmi), else `data` unchanged."""
    if data[:4] != b"RIFF" or data[8:12] != b"RMID":
        return data
    offset = 12
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset + 4 : offset + 8], "little")
        if data[offset : offset + 4] == b"data":
            return data[offset + 8 : offset + 8 + size]
        offset += 8 + size + (size & 1)
    return data


def quantize(
    score: symusic.Score,
    steps_per_beat: int,
    max_duration: int,
    merge_instruments: bool,
    limits: Limits,
) -> tuple[Notes, Meter, dict[str, int]]:
    """Notes of all non-drum tracks on the step grid, the meter from time signatures, and the
    count of every note dropped or changed on the way (NOTE_CHANGES)."""
    tpq = score.ticks_per_quarter
    if tpq <= 0:
        raise SkipSong("corrupt", f"ticks per quarter is {tpq}")
    tracks = [t for t in score.tracks if len(t.notes)]
    if not tracks:
        raise SkipSong("empty", "no notes")
    drums = sum(len(t.notes) for t in tracks if t.is_drum)
    tracks = [t for t in tracks if not t.is_drum]
    if not tracks:
        raise SkipSong("drums_only", "all notes are on the drum channel")
    total = sum(len(t.notes) for t in tracks)
    if total > limits.max_notes:
        raise SkipSong("too_many_notes", f"{total} notes > {limits.max_notes}")

    columns = [t.notes.numpy() for t in tracks]
    time = np.concatenate([c["time"] for c in columns]).astype(np.int64)
    length = np.concatenate([c["duration"] for c in columns]).astype(np.int64)
    pitch = np.concatenate([c["pitch"] for c in columns]).astype(np.int64)
    velocity = np.concatenate([c["velocity"] for c in columns]).astype(np.int64)
    program = np.concatenate(
        [
            np.full(len(c["time"]), 0 if merge_instruments else t.program)
            for c, t in zip(columns, tracks, strict=True)
        ]
    ).astype(np.int64)
    if time.min() < 0 or length.min() < 0 or pitch.min() < 0 or pitch.max() > 127:
        raise SkipSong("corrupt", "negative time or pitch outside 0..127")

    onset = _to_steps(time, tpq, steps_per_beat)
    grid = _to_steps(time + length, tpq, steps_per_beat) - onset  # length on the grid
    duration = np.clip(grid, 1, max_duration)
    steps = int((onset + duration).max())
    if steps > limits.max_steps:
        raise SkipSong("too_long", f"{steps} steps > {limits.max_steps}")

    # Sort by (onset, program, pitch, duration) and keep the last = longest of each triple.
    order = np.lexsort((duration, pitch, program, onset))
    keys = np.stack([onset, program, pitch], axis=1)[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (keys[1:] != keys[:-1]).any(axis=1)
    kept = order[last]
    notes = Notes(
        onset[kept],
        program[kept],
        pitch[kept],
        end_overlaps(onset[kept], program[kept], pitch[kept], duration[kept]),
        velocity[kept],
    )
    distinct_ticks = len(np.unique((time << 14) | (program << 7) | pitch))  # one int per key
    changes = {
        "drums": drums,
        "duplicate": len(time) - distinct_ticks,
        "merged": distinct_ticks - len(kept),
        "zero_length": int((length[kept] == 0).sum()),
        "stretched": int(((length[kept] > 0) & (grid[kept] < 1)).sum()),
        "cut_max_duration": int((grid[kept] > max_duration).sum()),
        "cut_restrike": int((notes.duration < duration[kept]).sum()),
    }
    return notes, _meter(score, steps_per_beat), changes


def end_overlaps(onset, program, pitch, duration) -> np.ndarray:
    """Durations cut so a note ends where the same key (program, pitch) strikes again.

    A key cannot sound twice at once, and MIDI note-on/off pairs cannot say which of two
    overlapping same-pitch notes ends first, so such notes would not survive a round trip.
    """
    order = np.lexsort((onset, pitch, program))
    o, p, k = onset[order], pitch[order], program[order]
    cut = duration[order].copy()
    same_key = (p[1:] == p[:-1]) & (k[1:] == k[:-1])
    cut[:-1] = np.where(same_key, np.minimum(cut[:-1], o[1:] - o[:-1]), cut[:-1])
    result = np.empty_like(cut)
    result[order] = cut
    return result


def _meter(score: symusic.Score, steps_per_beat: int) -> Meter:
    """Bar lengths in steps from the time signatures found on any track."""
    # Stable sort on time only: of two signatures at one tick, the later in the file wins.
    signatures = sorted(
        ((ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures),
        key=lambda ts: ts[0],
    )
    starts, lengths = [0], [4 * steps_per_beat]  # MIDI's default until the first signature
    tpq = score.ticks_per_quarter
    for tick, numerator, denominator in signatures:
        if numerator <= 0 or denominator <= 0:
            continue
        start = int(_to_steps(np.array([tick]), tpq, steps_per_beat)[0])
        length = max(1, round(numerator * 4 * steps_per_beat / denominator))
        if start == starts[-1]:
            lengths[-1] = length
        elif length != lengths[-1]:
            starts.append(start)
            lengths.append(length)
    return Meter(np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64))


def read_song(
    data: bytes, steps_per_beat: int, max_duration: int, merge_instruments: bool, limits: Limits
) -> Song:
    """MIDI bytes -> quantized notes, meter, note changes and file repairs, or SkipSong with
    the reason."""
    score, repairs = parse(data, limits)
    notes, meter, changes = quantize(score, steps_per_beat, max_duration, merge_instruments, limits)
    pedals = sustain_pedals(score, steps_per_beat)
    tempos = tempo_map(score, steps_per_beat)
    return Song(notes, meter, changes, repairs, pedals, tempos, main_program(score))


DEFAULT_QPM = 120.0  # quarter notes per minute before a file's first tempo event


def tempo_map(score: symusic.Score, steps_per_beat: int) -> np.ndarray:
    """(K, 2): the step each tempo starts at and its quarter notes per minute; of tempos on
    one step, the last."""
    tempos = score.tempos.numpy()
    if not len(tempos["time"]):
        return np.zeros((0, 2))
    step = _to_steps(tempos["time"].astype(np.int64), score.ticks_per_quarter, steps_per_beat)
    qpm = 60e6 / tempos["mspq"].astype(np.float64)
    last = np.r_[step[1:] != step[:-1], True]
    return np.stack([step[last], qpm[last]], axis=1)


def seconds_at(tempos: np.ndarray, step: int, steps_per_beat: int) -> float:
    """Seconds from step 0 to `step` under a tempo map (`tempo_map`; MIDI's 120 bpm before its
    first tempo): what bits per second divide by."""
    starts = np.r_[0, tempos[:, 0]].astype(np.float64)
    qpm = np.r_[DEFAULT_QPM, tempos[:, 1]]
    ends = np.r_[starts[1:], max(step, 0)]
    beats = (np.minimum(ends, step) - np.minimum(starts, step)).clip(0) / steps_per_beat
    return float((beats * 60 / qpm).sum())


def main_program(score: symusic.Score) -> int:
    """The program of the most non-drum notes (0 when there are none): merged instruments
    are written back in it."""
    count: dict[int, int] = {}
    for track in score.tracks:
        if not track.is_drum:
            count[track.program] = count.get(track.program, 0) + len(track.notes)
    return max(count, key=lambda program: (count[program], -program), default=0)


def sustain_pedals(score: symusic.Score, steps_per_beat: int) -> np.ndarray:
    """(K, 2) steps [down, up) while a sustain pedal of any non-drum track is down, the
    overlapping and touching ones joined (on the grid; a press shorter than a step is dropped)."""
    spans = [t.pedals.numpy() for t in score.tracks if not t.is_drum and len(t.pedals)]
    if not spans:
        return np.zeros((0, 2), dtype=np.int64)
    tpq = score.ticks_per_quarter
    time = np.concatenate([s["time"] for s in spans]).astype(np.int64)
    end = time + np.concatenate([s["duration"] for s in spans]).astype(np.int64)
    down, up = _to_steps(time, tpq, steps_per_beat), _to_steps(end, tpq, steps_per_beat)
    order = np.argsort(down, kind="stable")
    joined: list[list[int]] = []
    for start, stop in zip(down[order].tolist(), up[order].tolist(), strict=True):
        if stop <= start:
            continue
        if joined and start <= joined[-1][1]:
            joined[-1][1] = max(joined[-1][1], stop)
        else:
            joined.append([start, stop])
    return np.array(joined, dtype=np.int64).reshape(-1, 2)


def write_midi(
    notes: Notes,
    steps_per_beat: int,
    meter: Meter | None = None,
    tempos: np.ndarray | None = None,
) -> bytes:
    """Quantized notes -> MIDI bytes, one track per program, one tick per step (exact), with
    the meter's time signatures and the tempo map (`tempo_map`'s rows) when given."""
    score = symusic.Score(steps_per_beat)
    for step, qpm in [] if tempos is None else tempos.tolist():
        score.tempos.append(symusic.Tempo(int(step), float(qpm)))
    for program in np.unique(notes.program):
        mine = notes.program == program
        track = symusic.Track(name=f"program {program}", program=int(program), is_drum=False)
        track.notes = symusic.Note.from_numpy(
            time=notes.onset[mine].astype(np.int32),
            duration=notes.duration[mine].astype(np.int32),
            pitch=notes.pitch[mine].astype(np.int8),
            velocity=(
                np.full(int(mine.sum()), 80) if notes.velocity is None else notes.velocity[mine]
            ).astype(np.int8),
        )
        score.tracks.append(track)
    if meter is not None:
        for start, length in zip(meter.start, meter.length, strict=True):
            numerator, denominator = _signature(int(length), steps_per_beat)
            score.time_signatures.append(symusic.TimeSignature(int(start), numerator, denominator))
    return score.dumps_midi()


def _signature(bar_steps: int, steps_per_beat: int) -> tuple[int, int]:
    """A time signature whose bar lasts `bar_steps` (in quarters when possible, else eighths...)."""
    denominator = 4
    while (bar_steps * denominator) % (4 * steps_per_beat) and denominator < 64:
        denominator *= 2
    return max(1, bar_steps * denominator // (4 * steps_per_beat)), denominator
