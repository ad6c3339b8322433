"""Fill in the middle on bar boundaries (issue 29): a span of a song's bars moved after the
rest of the song behind two sentinel tokens, so that a left-to-right model learns to write bars
that lead into what follows them, as code models learn to fill in a function's body:

    <sos> prefix  <suffix> suffix  <middle> middle <eos>

Each part is the scheme's own encoding of its notes, its onsets counted from the part's first
step: a scheme's tokens count time from the token before, so the tokens of a span cut out of
the song's would start at the wrong step once moved. Where a part sits in the song is told by
the bar position of its tokens (the song's own), and by whoever arranges it (the span is
known: generation places the middle at its first bar). The sentinels <suffix> and <middle> are
the two ids after the scheme's vocabulary (vocab_size, vocab_size + 1); they are first-field
tokens and need a one-field scheme.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from midigen.data.bars import BarGrid
from midigen.encodings import Encoded, Scheme
from midigen.errors import MidigenError
from midigen.midi.files import Notes


@dataclass(frozen=True)
class Span:
    """A span of whole bars, as the steps where its first bar starts and where the bar after
    it starts: the middle holds the notes with onset in [start, end)."""

    start: int
    end: int


@dataclass(frozen=True)
class Arranged:
    """A song arranged for filling in: tokens (N,), their bar positions (N,), and where the
    middle's first token is (what is scored as the filled-in span)."""

    tokens: np.ndarray
    bar_pos: np.ndarray
    middle: int


def split_notes(notes: Notes, span: Span) -> tuple[Notes, Notes, Notes]:
    """The notes before the span, in it and after it, each with onsets from its own start."""
    parts = []
    for low, high in ((0, span.start), (span.start, span.end), (span.end, None)):
        keep = (notes.onset >= low) & (True if high is None else notes.onset < high)
        velocity = None if notes.velocity is None else notes.velocity[keep]
        parts.append(
            Notes(
                notes.onset[keep] - low,
                notes.program[keep],
                notes.pitch[keep],
                notes.duration[keep],
                velocity,
            )
        )
    return parts[0], parts[1], parts[2]


def body(
    scheme: Scheme, encoded: Encoded, offset: int, grid: BarGrid
) -> tuple[np.ndarray, np.ndarray]:
    """A part's tokens without <sos> and <eos>, and their bar positions in the song."""
    tokens, times = encoded.stored, encoded.times
    end = len(tokens) - 1 if tokens[-1] == scheme.eos_row[0] else len(tokens)
    return tokens[1:end], grid.position(times[1:end] + offset)


def arrange(scheme: Scheme, notes: Notes, span: Span, grid: BarGrid, vocab_size: int) -> Arranged:
    """<sos> prefix <suffix> suffix <middle> middle <eos> for one song and span."""
    if len(scheme.fields) != 1:
        raise MidigenError(f"filling in needs a one-field scheme; {scheme.name} has rows")
    suffix_id, middle_id = vocab_size, vocab_size + 1
    before, inside, after = (scheme.encode(part) for part in split_notes(notes, span))
    parts = [
        (before.stored[:1], np.zeros(1, np.int64)),  # <sos>
        body(scheme, before, 0, grid),
        (np.array([suffix_id]), grid.position([span.end])),
        body(scheme, after, span.end, grid),
        (np.array([middle_id]), grid.position([span.start])),
    ]
    middle = sum(len(tokens) for tokens, _ in parts)
    inside_tokens, inside_pos = body(scheme, inside, span.start, grid)
    parts += [
        (inside_tokens, inside_pos),
        (np.array(scheme.eos_row), grid.position([span.end])),
    ]
    tokens = np.concatenate([np.asarray(t, np.int64) for t, _ in parts])
    bar_pos = np.concatenate([np.asarray(p, np.int64) for _, p in parts])
    return Arranged(tokens, bar_pos, middle)


def restore(scheme: Scheme, arranged: np.ndarray, span: Span, vocab_size: int) -> Notes:
    """The song's notes back from an arrangement (the middle generated or real): each part
    decoded alone and moved to its place."""
    tokens = np.asarray(arranged, np.int64)
    at_suffix = int(np.flatnonzero(tokens == vocab_size)[0])
    at_middle = int(np.flatnonzero(tokens == vocab_size + 1)[0])
    opening, eos = tokens[:1], np.array(scheme.eos_row, np.int64)
    pieces = [
        (tokens[1:at_suffix], 0),
        (tokens[at_middle + 1 :], span.start),
        (tokens[at_suffix + 1 : at_middle], span.end),
    ]
    decoded = []
    for part, offset in pieces:
        part = part[:-1] if len(part) and part[-1] == eos[0] else part
        notes = scheme.decode(np.concatenate([opening, part, eos]))
        decoded.append((notes, offset))
    return merge(decoded)


def merge(parts: list[tuple[Notes, int]]) -> Notes:
    """Notes of several parts, each moved by its offset, in (onset, program, pitch) order."""
    fields = ("onset", "program", "pitch", "duration")
    joined = {
        f: np.concatenate([getattr(n, f) + (o if f == "onset" else 0) for n, o in parts])
        for f in fields
    }
    velocities = [n.velocity for n, _ in parts]
    velocity = None if any(v is None for v in velocities) else np.concatenate(velocities)
    order = np.lexsort((joined["pitch"], joined["program"], joined["onset"]))
    return Notes(
        *(joined[f][order] for f in fields),
        None if velocity is None else velocity[order],
    )
