"""What the model sees while a continuation grows: a key/value cache that mirrors training,
the recomputing reference, and the LSTM's carried state.

Every query sees what it saw in training. Segments of `segment_len` tokens start at the song's
first token; a query at position i of a segment sees the `xl_mem_len` tokens before the segment
through the XL memory plus the segment up to i, and the kNN memory holds every earlier token of
the song before the segment (written when a segment is complete). `KVCache` feeds tokens one at
a time under exactly those contexts: the XL memory grows into a cache of the current segment and
shrinks back to `xl_mem_len` when the segment is complete, which is also when that segment goes
into the kNN memory. So xl and xl_knn run past their context by pushing the oldest segment into
memory. Vanilla has no memory: its cache keeps the last segment_len - 1 tokens, a sliding window
(beyond the first window the cached keys were computed with their own, older context, as in XL;
re-encoding the window instead would cost a whole forward per token). A long prompt is read
in segment-sized forward passes whose queries each see only their own window, which computes
exactly what feeding it one token at a time does. `Recompute` runs the
current context again for every token, without a cache: the reference for tests and benchmark.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch
from torch import Tensor

from midigen.models.lstm import LSTMState, MusicLSTM
from midigen.models.memory import MemoryState
from midigen.models.transformer import MusicTransformer, SegmentTrace


class Context(Protocol):
    """How generation runs the model: logits after the tokens fed so far, rows reordered."""

    def feed(self, tokens: Tensor, bar_pos: Tensor) -> Tensor:
        """(B, n) tokens and bar positions -> the next-token logits (B, V) after the last one."""
        ...

    def select(self, rows: Tensor) -> None:
        """Row r continues row rows[r] (beam search)."""
        ...


class KVCache:
    """Feeds tokens under their training contexts, keeping every past key/value it may need.

    Its rows may be songs at different points of their segments (`stack` batches the caches of
    prompts of different lengths): a row's segment is counted from its own song start, the
    cache keeps what the row furthest into its segment needs, and a row that completes its
    segment alone hides its older keys from itself rather than dropping them for everyone."""

    def __init__(self, model: MusicTransformer):
        self.model = model
        config = model.config
        self.segment, self.mem_len = config.segment_len, model.past_len
        self.memory = model.keeps_memory
        self.state: MemoryState | None = None

    @classmethod
    def stack(cls, caches: list[KVCache]) -> KVCache:
        """One cache whose rows continue those of `caches`, in order (`MemoryState.stack`)."""
        stacked = cls(caches[0].model)
        stacked.state = MemoryState.stack([cache.state for cache in caches])
        return stacked

    def feed(self, tokens: Tensor, bar_pos: Tensor) -> Tensor:
        """(B, n) tokens and bar positions -> the next-token logits (B, V) after the last one."""
        start = 0
        while start < tokens.shape[1]:
            take = min(tokens.shape[1] - start, self._room())
            logits = self._forward(
                tokens[:, start : start + take], bar_pos[:, start : start + take]
            )
            start += take
        return logits[:, -1]

    def select(self, rows: Tensor) -> None:
        """Row r continues row rows[r] (beam search; batched generation drops finished rows)."""
        self.state = self.state.select(rows)

    def _in_segment(self, state: MemoryState | None) -> list[int]:
        """Per row, the tokens of its current segment fed so far."""
        if state is None:
            return [0]
        return [(state.offset - start) % self.segment for start in state.song_start.tolist()]

    def _room(self) -> int:
        """How many tokens one forward may take with every query still in its context."""
        if self.memory:  # up to the end of the segment that ends first
            return self.segment - max(self._in_segment(self.state))
        return self.segment  # vanilla: a window of segment_len keys slides over any length

    def _forward(self, tokens: Tensor, bar_pos: Tensor) -> Tensor:
        if not self.memory:  # each query sees the segment_len tokens up to it, as fed alone
            logits, trace = self.model.read(tokens, bar_pos, state=self.state, window=self.segment)
            self.state = trace.cached(self.segment - 1)
            return logits
        if self.state is not None and self.state.past is not None:
            # room for the rest of the segment: tokens are then written into it, not copied
            past = self.state.past.with_room(self.mem_len + self.segment)
            if past is not self.state.past:
                self.state = dataclasses.replace(self.state, past=past)
        logits, trace = self.model.read(tokens, bar_pos, state=self.state)
        filled = self._in_segment(trace.after)  # 0: the row has just completed its segment
        self.state = trace.cached(self.mem_len + max(n or self.segment for n in filled))
        complete = [row for row, n in enumerate(filled) if n == 0]
        if complete:
            self._end_segment(None if len(complete) == len(filled) else complete)
            if self.state.past is not None:
                past = self.state.past.newest(self.mem_len + max(filled))
                self.state = dataclasses.replace(self.state, past=past)
        return logits

    def _end_segment(self, rows: list[int] | None) -> None:
        """The complete segment of `rows` (None: all), in the cache, goes to the memories as
        in training."""
        past = self.state.past
        own = past.doc[:, -self.segment :]
        self.state = self.model.remember(
            SegmentTrace(self.state, past.keys, past.values, past.pos, past.doc, own), rows
        )


class Recompute:
    """No key/value cache: every call runs the whole current context again. Memory models keep
    the state left by the song's complete segments (training's segment-by-segment forward) and
    re-run the current segment; vanilla re-runs its last segment_len tokens."""

    def __init__(self, model: MusicTransformer):
        self.model = model
        self.segment = model.config.segment_len
        self.memory = model.keeps_memory
        self.state: MemoryState | None = None  # memory models: after the complete segments
        self.tokens: Tensor | None = None  # the current segment (vanilla: window) so far
        self.bar_pos: Tensor | None = None

    def feed(self, tokens: Tensor, bar_pos: Tensor) -> Tensor:
        """(B, n) tokens and bar positions -> the next-token logits (B, V) after the last one."""
        if self.tokens is not None:
            tokens, bar_pos = (
                torch.cat([self.tokens, tokens], 1),
                torch.cat([self.bar_pos, bar_pos], 1),
            )
        if not self.memory:
            self.tokens, self.bar_pos = tokens[:, -self.segment :], bar_pos[:, -self.segment :]
            return self.model(self.tokens, self.bar_pos)[0][:, -1]
        while tokens.shape[1] >= self.segment:  # complete segments go into memory for good
            logits, _, self.state = self.model(
                tokens[:, : self.segment], bar_pos[:, : self.segment], state=self.state
            )
            tokens, bar_pos = tokens[:, self.segment :], bar_pos[:, self.segment :]
        self.tokens, self.bar_pos = tokens, bar_pos
        if tokens.shape[1]:
            logits = self.model.read(tokens, bar_pos, state=self.state)[0]
        return logits[:, -1]

    def select(self, rows: Tensor) -> None:
        """Row r continues row rows[r] (beam search)."""
        if self.state is not None:
            self.state = self.state.select(rows)
        self.tokens, self.bar_pos = self.tokens[rows], self.bar_pos[rows]


class Carried:
    """The LSTM's context: its state after the tokens fed so far (one song: one id)."""

    def __init__(self, model: MusicLSTM):
        self.model, self.state = model, None

    def feed(self, tokens: Tensor, bar_pos: Tensor) -> Tensor:
        """(B, n) tokens and bar positions -> the next-token logits (B, V) after the last one."""
        logits, _, self.state = self.model(tokens, bar_pos, torch.zeros_like(bar_pos), self.state)
        return logits[:, -1]

    @classmethod
    def stack(cls, contexts: list[Carried]) -> Carried:
        """One context whose rows continue those of `contexts`, in order."""
        stacked = cls(contexts[0].model)
        stacked.state = LSTMState.stack([context.state for context in contexts])
        return stacked

    def select(self, rows: Tensor) -> None:
        """Row r continues row rows[r] (beam search; batched generation drops finished rows)."""
        self.state = self.state.select(rows)
