"""Contiguous batches: every batch row streams whole songs back to back, in order.

Memory models need the segments of a song in order, in the same row. Each row is a queue of
whole songs; a segment is the next `segment_len` tokens of every row, so song starts are
staggered across rows instead of padded to a common length. Every token carries the id of
its song (`doc`), which is how the model knows where a row's memory must be forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from midigen.data.corpus import Shard
from midigen.encodings import Scheme
from midigen.errors import MidigenError

log = logging.getLogger(__name__)
PAD = 0  # the input under padding (its target is IGNORE): every vocabulary has an id 0
IGNORE = -100  # the target the loss skips (padding, the jump between songs)


@dataclass
class Segment:
    """One step of every row: inputs, next-token targets, bar positions and song ids."""

    tokens: torch.Tensor  # (B, T) int64, or (B, T, F) rows of F fields (codebook)
    targets: torch.Tensor  # the same shape, IGNORE where there is nothing to predict
    bar_pos: torch.Tensor  # (B, T) int64
    doc: torch.Tensor  # (B, T) int64 song id, -1 on padding

    def to(self, device: torch.device | str) -> Segment:
        return Segment(
            *(
                t.to(device, non_blocking=True)
                for t in (self.tokens, self.targets, self.bar_pos, self.doc)
            )
        )

    def rows(self, start: int, stop: int) -> Segment:
        """The rows this process trains on under DDP."""
        return Segment(
            self.tokens[start:stop],
            self.targets[start:stop],
            self.bar_pos[start:stop],
            self.doc[start:stop],
        )


def pitch_shift(
    tokens: np.ndarray, scheme: Scheme, low: int, high: int, rng: np.random.Generator
) -> np.ndarray:
    """Transpose a song's pitch tokens by a random interval in [low, high] that keeps every
    pitch inside the scheme's range; every other token is untouched."""
    mask, pitches = scheme.pitches(tokens)
    if not len(pitches) or low == high == 0:
        return tokens
    bottom, top = scheme.pitch_range
    low = max(low, bottom - int(pitches.min()))
    high = min(high, top - 1 - int(pitches.max()))
    shift = int(rng.integers(low, high + 1)) if low <= high else 0
    shifted = tokens.copy()
    shifted[mask] += shift
    return shifted


def played_twice(song: np.ndarray) -> np.ndarray:
    """A song's array followed by itself again without its first entry (the `<sos>`): one
    song, so memories survive into the second copy (the repeat curriculum and probe)."""
    return np.concatenate([song, song[1:]])


class ContiguousBatches:
    """Segments of `batch_size` rows x `segment_len` tokens over one split, epoch by epoch.

    Songs are shuffled per epoch (seeded) and dealt to the currently shortest row, so rows end
    at about the same time; the shorter rows are padded at the end. Song ids are unique across
    epochs, so no memory survives from one epoch to the next either.

    `repeat_fraction` is a curriculum for memory: that share of the songs (drawn per epoch) is
    played twice in a row, so copying from far back pays during training; 0 leaves songs alone.
    """

    def __init__(
        self,
        shard: Shard,
        scheme: Scheme,
        batch_size: int,
        segment_len: int,
        seed: int = 0,
        shuffle: bool = True,
        pitch_range: tuple[int, int] = (0, 0),
        split: str = "train",
        repeat_fraction: float = 0.0,
    ):
        self.shard, self.scheme = shard, scheme
        self.fields = len(scheme.fields)
        self.batch_size, self.segment_len = batch_size, segment_len
        self.seed, self.shuffle, self.pitch_range = seed, shuffle, pitch_range
        self.repeat_fraction = repeat_fraction
        self.n_songs = len(shard.offsets) - 1
        if pitch_range != (0, 0) and scheme.pitch_range[0] >= scheme.pitch_range[1]:
            log.warning("%s tokens cannot be transposed: train.pitch_shift is off", scheme.name)
        if self.n_songs == 0:
            raise MidigenError(
                f"the {split} split has no songs (add files, or raise download.{split}_fraction)"
            )

    def epoch(self, epoch: int) -> list[Segment]:
        """All segments of one epoch, in order (each row's songs in sequence)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.n_songs) if self.shuffle else np.arange(self.n_songs)
        twice = np.zeros(self.n_songs, dtype=bool)
        if self.repeat_fraction > 0:  # drawn only when asked: other runs keep their batches
            twice = rng.random(self.n_songs) < self.repeat_fraction
        rows: list[list[int]] = [[] for _ in range(self.batch_size)]
        lengths = np.zeros(self.batch_size, dtype=np.int64)
        for song in order:
            r = int(np.argmin(lengths))
            rows[r].append(int(song))
            length = self.shard.offsets[song + 1] - self.shard.offsets[song]
            lengths[r] += 2 * length - 1 if twice[song] else length
        streams = [self._row(songs, twice, epoch, rng) for songs in rows]
        n_segments = -(-int(lengths.max()) // self.segment_len)
        width = n_segments * self.segment_len
        batch = np.stack([self._pad(stream, width) for stream in streams])  # (B, 2F + 2, width)
        return [self._segment(batch, i) for i in range(n_segments)]

    def _row(
        self, songs: list[int], twice: np.ndarray, epoch: int, rng: np.random.Generator
    ) -> np.ndarray:
        """One row's stream as parallel arrays: F of tokens, F of targets (a field each), bar
        positions, song ids."""
        parts = []
        for song in songs:
            span = self.shard.song(song)
            tokens = np.asarray(self.shard.tokens[span], dtype=np.int64).reshape(
                span.stop - span.start, self.fields
            )
            tokens = pitch_shift(tokens, self.scheme, *self.pitch_range, rng)
            bar_pos = np.asarray(self.shard.bar_pos[span], dtype=np.int64)
            if twice[song]:
                tokens, bar_pos = played_twice(tokens), played_twice(bar_pos)
            ignored = np.full((1, self.fields), IGNORE)  # no target across the song boundary
            targets = np.concatenate([tokens[1:], ignored])
            doc = np.full(len(tokens), epoch * self.n_songs + song, dtype=np.int64)
            parts.append(np.concatenate([tokens.T, targets.T, bar_pos[None], doc[None]]))
        empty = np.zeros((2 * self.fields + 2, 0), dtype=np.int64)
        return np.concatenate(parts, axis=1) if parts else empty

    def _pad(self, stream: np.ndarray, width: int) -> np.ndarray:
        fill = np.array([[PAD]] * self.fields + [[IGNORE]] * self.fields + [[0], [-1]])
        return np.concatenate([stream, np.repeat(fill, width - stream.shape[1], axis=1)], axis=1)

    def _segment(self, batch: np.ndarray, i: int) -> Segment:
        window = torch.from_numpy(batch[:, :, i * self.segment_len : (i + 1) * self.segment_len])
        f = self.fields
        tokens, targets = window[:, :f], window[:, f : 2 * f]
        if f > 1:  # rows: (B, T, F)
            tokens, targets = tokens.transpose(1, 2), targets.transpose(1, 2)
        else:
            tokens, targets = tokens[:, 0], targets[:, 0]
        return Segment(tokens, targets, window[:, 2 * f], window[:, 2 * f + 1])

    def __iter__(self) -> Iterator[Segment]:
        epoch = 0
        while True:
            yield from self.epoch(epoch)
            epoch += 1
