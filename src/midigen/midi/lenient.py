"""The Standard MIDI File's framing, and a lenient reader for files the fast parser refuses.

symusic (files.parse) reads well-formed files fast and refuses the rest whole. Files in the
wild often break one rule only: a data byte above 127, a stray undefined status byte, or
running status carried on over a sysex or meta event (the spec says they cancel it). The
lenient reader walks each track with mido's event readers, repairs those three, counts every
repair, and writes the file again as a clean SMF that symusic then reads like any other. A
file truncated or framed wrongly stays refused: there is no telling what it held.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import mido
from mido.midifiles.midifiles import read_meta_message, read_variable_int

HEADER_BYTES = 14  # "MThd", length 6, format, track count, division
DATA_BYTES = {0x8: 2, 0x9: 2, 0xA: 2, 0xB: 2, 0xC: 1, 0xD: 1, 0xE: 2}  # by status nibble
REPAIRS = ("clipped_bytes", "skipped_events", "running_status_resumed")
SYSEX = re.compile(rb"[\x00-\x7f][\xf0\xf7]")  # a delta time's last byte, then a sysex status


class Unreadable(Exception):
    """Not even the lenient reader can read this file."""


@dataclass(frozen=True)
class Layout:
    """A file's header fields and its track chunks (bodies), split by the chunk framing only."""

    format: int
    division: int
    tracks: list[bytes]

    @classmethod
    def of(cls, data: bytes) -> Layout:
        if len(data) < HEADER_BYTES or data[:4] != b"MThd":
            raise Unreadable("no MIDI header")
        fmt, division = int.from_bytes(data[8:10], "big"), int.from_bytes(data[12:14], "big")
        offset, tracks = 8 + int.from_bytes(data[4:8], "big"), []
        while offset + 8 <= len(data):
            size = int.from_bytes(data[offset + 4 : offset + 8], "big")
            if offset + 8 + size > len(data):
                raise Unreadable(f"a chunk claims {size} bytes past the end of the file")
            if data[offset : offset + 4] == b"MTrk":  # other chunk types are skipped
                tracks.append(data[offset + 8 : offset + 8 + size])
            offset += 8 + size
        if not tracks:
            raise Unreadable("no complete track chunk")
        return cls(fmt, division, tracks)

    def to_bytes(self, tracks: list[bytes] | None = None, fmt: int | None = None) -> bytes:
        """An SMF of these (or other) track bodies under this header's division."""
        tracks = self.tracks if tracks is None else tracks
        fmt = self.format if fmt is None else fmt
        head = b"MThd" + (6).to_bytes(4, "big") + fmt.to_bytes(2, "big")
        head += len(tracks).to_bytes(2, "big") + self.division.to_bytes(2, "big")
        return head + b"".join(b"MTrk" + len(t).to_bytes(4, "big") + t for t in tracks)


def may_resume_running_status(data: bytes) -> bool:
    """Whether some sysex event seems to be followed by an event in running status: symusic
    misreads such files silently, so they are worth the (much slower) lenient reading. A quick
    look at the bytes around every F0/F7 after a delta time in a track chunk; a false alarm
    only costs time."""
    try:
        tracks = Layout.of(data).tracks
    except Unreadable:
        return False
    for body in tracks:
        for match in SYSEX.finditer(b"\x00" + body):  # the first event's delta may be absent
            length, at = _vlq(body, match.end() - 1)
            _, at = _vlq(body, at + length)  # the next event's delta time
            if at < len(body) and body[at] < 0x80:
                return True
    return False


def _vlq(data: bytes, start: int) -> tuple[int, int]:
    """A variable-length quantity at `start` (at most 4 bytes) and where it ends."""
    value = 0
    for at in range(start, min(start + 4, len(data))):
        value = (value << 7) | (data[at] & 0x7F)
        if data[at] < 0x80:
            return value, at + 1
    return value, len(data)


def read_leniently(layout: Layout) -> tuple[bytes, dict[str, int]]:
    """A clean SMF holding what `layout`'s tracks say, and the count of each repair. An SMPTE
    division (top bit set) is for the caller to turn into ticks per beat first, as parse does."""
    if layout.division & 0x8000:
        raise Unreadable(f"SMPTE time division {layout.division:#06x}, not ticks per beat")
    repairs = dict.fromkeys(REPAIRS, 0)
    tracks = [_track(body, repairs) for body in layout.tracks]
    out = io.BytesIO()
    fmt = 0 if len(tracks) == 1 else 1  # type 2 is split into type-0 files before it gets here
    mido.MidiFile(type=fmt, ticks_per_beat=layout.division, tracks=tracks).save(file=out)
    return out.getvalue(), repairs


def _track(body: bytes, repairs: dict[str, int]) -> mido.MidiTrack:
    """One track's events; running status survives sysex and meta events (a common writer
    bug), undefined status bytes are skipped (their delta time kept), data bytes clipped."""
    stream, track = io.BytesIO(body), mido.MidiTrack()
    status, after_system, delta = None, False, 0
    try:
        while stream.tell() < len(body):
            delta += read_variable_int(stream)
            byte = _next(stream)
            if byte == 0xFF:
                track.append(_meta(stream, delta, repairs))
            elif byte in (0xF0, 0xF7):
                stream.read(read_variable_int(stream))  # sysex: nothing the encoding uses
            elif byte >= 0xF0 or (byte < 0x80 and status is None):
                repairs["skipped_events"] += 1
                continue
            else:
                if byte < 0x80:
                    repairs["running_status_resumed"] += after_system
                    data = [byte]
                else:
                    status, data = byte, []
                data += [_next(stream) for _ in range(DATA_BYTES[status >> 4] - len(data))]
                repairs["clipped_bytes"] += sum(b > 127 for b in data)
                clipped = [min(b, 127) for b in data]
                track.append(mido.Message.from_bytes([status, *clipped], time=delta))
            after_system, delta = byte >= 0xF0, 0
    except EOFError:
        raise Unreadable("a track ends inside an event") from None
    except (OSError, ValueError) as e:  # mido: an event longer than it allows, or senseless
        raise Unreadable(str(e)) from None
    return track


def _meta(stream: io.BytesIO, delta: int, repairs: dict[str, int]) -> mido.MetaMessage:
    """A meta event, or an empty text event in place of one whose data makes no sense."""
    start = stream.tell()
    try:
        return read_meta_message(stream, delta)
    except (EOFError, OSError):
        raise  # the event runs past the end of the track: `_track` calls the file unreadable
    except Exception:  # mido's decoders raise their own types too (KeySignatureError, IndexError)
        stream.seek(start + 1)
        stream.read(read_variable_int(stream))
        repairs["skipped_events"] += 1
        return mido.MetaMessage("text", text="", time=delta)


def _next(stream: io.BytesIO) -> int:
    byte = stream.read(1)
    if not byte:
        raise EOFError
    return byte[0]
