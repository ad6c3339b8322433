"""What a segment leaves for the next: the keys/values attention reaches back to (Transformer-XL's
memory, generation's cache) and the kNN memory of the whole song, in one MemoryState.

Both are tagged with the song (`doc`) each entry came from. The model masks every memory entry
whose song differs from the query's, which is what "a song boundary clears that row's memory"
means, exactly and per row, without touching the other rows. Nothing here carries a gradient:
memories are detached tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

NO_DOC = -(2**62)  # song id of "nothing seen yet"; real ids are >= -1 (padding is -1)


# ---- the past attention reaches back to: Transformer-XL's memory, generation's cache -----------


@dataclass
class PastKeyValues:
    """Per layer, the keys/values of the row's last M tokens before the current ones: what
    Transformer-XL keeps of earlier segments, or while generating, the cache of every model.

    `doc` and `pos` describe those tokens for every layer at once: their song id (B, M) and
    their absolute stream position (M,), shared by all rows because segments advance in step.
    The relative distance of a memory key is then simply query position - key position.

    `buffers` (generation's key/value cache only, see `with_room`): per layer, key and value
    buffers with room beyond the M positions, whose first M are `keys`/`values`, so that a new
    token is written in place instead of copying the whole cache for every token. Only the
    newest memory made from such buffers may be used: appending writes into their room.
    """

    keys: list[Tensor]  # per layer (B, H, M, Dh)
    values: list[Tensor]  # per layer (B, H, M, Dh)
    doc: Tensor  # (B, M) int64
    pos: Tensor  # (M,) int64
    buffers: tuple[list[Tensor], list[Tensor]] | None = None  # per layer (B, H, capacity, Dh)

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """What layer `layer` attends to: its memory, then the segment's own k, v (B, H, T, Dh)."""
        used, total = len(self.pos), len(self.pos) + k.shape[2]
        if self.buffers is not None and total <= self.buffers[0][layer].shape[2]:
            keys, values = (side[layer][:, :, :total] for side in self.buffers)
            keys[:, :, used:], values[:, :, used:] = k, v
            return keys, values
        keys = torch.cat([self.keys[layer].to(k.dtype), k], dim=2)
        return keys, torch.cat([self.values[layer].to(v.dtype), v], dim=2)

    def with_room(self, capacity: int) -> PastKeyValues:
        """The same memory in buffers of `capacity` positions, so that `append` writes in place
        (inference only: what is written there carries no gradient). Self if it has them."""
        if self.buffers is not None and self.buffers[0][0].shape[2] >= capacity:
            return self
        used = len(self.pos)

        def buffer(memory: Tensor) -> Tensor:
            room = memory.new_empty(*memory.shape[:2], capacity, memory.shape[3])
            room[:, :, :used] = memory
            return room

        buffers = ([buffer(k) for k in self.keys], [buffer(v) for v in self.values])
        return PastKeyValues(*self._used(buffers, used), self.doc, self.pos, buffers)

    @staticmethod
    def _used(buffers: tuple[list[Tensor], list[Tensor]], used: int) -> list[list[Tensor]]:
        return [[b[:, :, :used] for b in side] for side in buffers]

    def select(self, rows: Tensor) -> PastKeyValues:
        """Row r of the result is row rows[r] (beam search reorders and copies hypotheses)."""
        if self.buffers is None:
            keys, values = [k[rows] for k in self.keys], [v[rows] for v in self.values]
            return PastKeyValues(keys, values, self.doc[rows], self.pos)
        buffers = ([b[rows] for b in self.buffers[0]], [b[rows] for b in self.buffers[1]])
        return PastKeyValues(*self._used(buffers, len(self.pos)), self.doc[rows], self.pos, buffers)

    def newest(self, length: int) -> PastKeyValues:
        """The memory of the newest `length` positions (self when it holds no more)."""
        return PastKeyValues.extend(self, self.keys, self.values, self.doc, self.pos, length)

    @staticmethod
    def stack(memories: list[PastKeyValues], offsets: list[int], offset: int) -> PastKeyValues:
        """One memory of the rows of all `memories`, each holding its stream's newest
        positions up to offsets[i], moved to end at stream position `offset`: the rows then
        advance in step. A row with fewer positions than the widest is padded on the left with
        entries of no song (NO_DOC), which no query sees."""
        width = max(len(memory.pos) for memory in memories)

        def stacked(side: list[list[Tensor]]) -> list[Tensor]:
            return [
                torch.cat([F.pad(rows, (0, 0, width - rows.shape[2], 0)) for rows in layer])
                for layer in zip(*side, strict=True)
            ]

        doc = torch.cat([F.pad(m.doc, (width - m.doc.shape[1], 0), value=NO_DOC) for m in memories])
        keys = stacked([memory.keys for memory in memories])
        values = stacked([memory.values for memory in memories])
        pos = torch.arange(offset - width, offset, device=doc.device)
        for memory, end in zip(memories, offsets, strict=True):
            if len(memory.pos) and int(memory.pos[-1]) != end - 1:
                raise ValueError("PastKeyValues.stack needs memories of their streams' newest keys")
        return PastKeyValues(keys, values, doc, pos)

    def state_dict(self) -> dict:
        return {
            "keys": [k.cpu() for k in self.keys],
            "values": [v.cpu() for v in self.values],
            "doc": self.doc.cpu(),
            "pos": self.pos.cpu(),
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> PastKeyValues:
        return cls(
            [k.to(device) for k in state["keys"]],
            [v.to(device) for v in state["values"]],
            state["doc"].to(device),
            state["pos"].to(device),
        )

    @staticmethod
    def extend(
        previous: PastKeyValues | None,
        keys: list[Tensor],
        values: list[Tensor],
        doc: Tensor,
        pos: Tensor,
        length: int,
    ) -> PastKeyValues:
        """The memory after a segment: the newest `length` of the positions it attended to.
        `keys` and `values` (per layer, detached: `previous.append`'s results), `doc` (B, S)
        and `pos` (S,) describe all of those: `previous`'s, then the segment's own."""
        if len(pos) > length:  # drop the oldest
            keys, values = [k[:, :, -length:] for k in keys], [v[:, :, -length:] for v in values]
            return PastKeyValues(keys, values, doc[:, -length:], pos[-length:])
        buffers = None if previous is None else previous.buffers
        if buffers is not None and len(pos) > buffers[0][0].shape[2]:
            buffers = None  # `append` had no room: it copied
        return PastKeyValues(keys, values, doc, pos, buffers)


def hide_older(doc: Tensor, rows: list[int], length: int) -> Tensor:
    """`doc` (B, M) with every entry of `rows` but the newest `length` marked as no song's, so
    that those rows no longer see them (the other rows keep them)."""
    hidden = doc.clone()
    hidden[rows, : max(0, doc.shape[1] - length)] = NO_DOC
    return hidden


# ---- kNN: every key/value of the current song, searched exactly on the device ----------------


class KNNMemory:
    """Per batch row, every past key/value of that row's current song (Memorizing Transformers),
    kept where the model runs and searched exactly: for all rows, heads and queries at once.

    Keys and values live in ring buffers (B, H, capacity, Dh), float32. The i-th entry a row
    stores since its song began goes to slot i % max_memories: capacity grows by doubling up
    to max_memories, and from then on the newest entry overwrites the oldest in place (no
    shift, no index to rebuild), so a write costs the same however full the memory is. A
    row's used slots are always its first `size(row)`; the ids `lookup` returns are slots.
    Retrieval ranks by the inner product, the score attention gives (the kNN layer hands over
    unit keys and temperature-scaled queries, so that is its cosine similarity): one matmul
    and top-k per block of slots, over the rows that hold entries in that block (a row's
    search costs its own fill, not the fullest row's), each block's winners merged with the
    best so far, so the scores held at once stay under SCORES_PER_BLOCK whatever the fill.
    A row holds one song: writing a different song resets it, and queries of any other song get
    nothing back.
    """

    SCORES_PER_BLOCK = 2**25  # scores (B x H x T x slots) one block of the search computes

    def __init__(
        self,
        batch: int,
        n_head: int,
        head_dim: int,
        max_memories: int,
        device: torch.device | str = "cpu",
    ):
        self.batch, self.n_head, self.head_dim = batch, n_head, head_dim
        self.max_memories, self.device = max_memories, torch.device(device)
        self.doc = torch.full((batch,), NO_DOC, dtype=torch.int64)  # each row's song
        self.count = [0] * batch  # entries each row stored since its song began
        self.keys = self._buffer(0)
        self.values = self._buffer(0)

    def _buffer(self, capacity: int) -> Tensor:
        return torch.zeros(self.batch, self.n_head, capacity, self.head_dim, device=self.device)

    def size(self, row: int) -> int:
        return min(self.count[row], self.max_memories)

    def stored(self, row: int) -> tuple[Tensor, Tensor]:
        """The row's keys and values, (H, N, Dh) each, oldest first."""
        n, oldest = self.size(row), self.count[row] % self.max_memories
        keys, values = self.keys[row, :, :n], self.values[row, :, :n]
        if self.count[row] <= self.max_memories:
            return keys, values
        return tuple(torch.cat([x[:, oldest:], x[:, :oldest]], dim=1) for x in (keys, values))

    # -- writing --

    def clear(self, row: int) -> None:
        self.count[row] = 0

    def _reserve(self, needed: int) -> None:
        """Room for `needed` slots per row (at most max_memories), grown by doubling."""
        capacity = self.keys.shape[2]
        if needed <= capacity:
            return
        capacity = min(self.max_memories, max(needed, 2 * capacity))
        for name in ("keys", "values"):
            grown = self._buffer(capacity)
            grown[:, :, : getattr(self, name).shape[2]] = getattr(self, name)
            setattr(self, name, grown)

    def _put(self, mine: Tensor, keys: Tensor, values: Tensor) -> None:
        """Append the entries `mine` (B, T) picks of (B, H, T, Dh) keys/values to their rows
        in order, each row keeping its newest max_memories."""
        n = mine.sum(1)
        rank = mine.cumsum(1) - 1  # an entry's place among its row's new ones
        keep = mine & (rank >= (n[:, None] - self.max_memories))
        row, token = keep.nonzero(as_tuple=True)
        count = torch.tensor(self.count, dtype=torch.int64)
        slot = (count[row] + rank[row, token]) % self.max_memories  # (N,) one per kept entry
        self.count = [c + k for c, k in zip(self.count, n.tolist(), strict=True)]
        self._reserve(max(self.size(r) for r in range(self.batch)))
        at = (row.to(keys.device), slice(None), token.to(keys.device))  # (N, H, Dh) entries
        stored_at = (row.to(self.device), slice(None), slot.to(self.device))
        self.keys[stored_at] = keys.detach()[at].to(self.device, torch.float32)
        self.values[stored_at] = values.detach()[at].to(self.device, torch.float32)

    def add(self, row: int, keys: Tensor, values: Tensor) -> None:
        """Append (H, n, Dh) keys/values to a row, dropping the oldest beyond max_memories."""
        mine = torch.zeros(self.batch, keys.shape[1], dtype=torch.bool)
        mine[row] = True
        expand = (self.batch, *keys.shape)
        self._put(mine, keys[None].expand(expand), values[None].expand(expand))

    def write(
        self, keys: Tensor, values: Tensor, doc: Tensor, rows: list[int] | None = None
    ) -> None:
        """Store a finished segment's (B, H, T, Dh) keys/values: per row (of `rows`; None: all),
        its last song only.

        A row whose last song differs from the one in memory is reset first, so a new song
        starts from nothing. Padding (doc -1) is never stored.
        """
        doc = doc.cpu()
        chosen = torch.zeros(self.batch, dtype=torch.bool)
        chosen[list(range(self.batch)) if rows is None else rows] = True
        last = doc[:, -1]
        for row in chosen.nonzero().flatten().tolist():
            if int(last[row]) != int(self.doc[row]):
                self.clear(row)
                self.doc[row] = last[row]
        self._put((doc == last[:, None]) & (last >= 0)[:, None] & chosen[:, None], keys, values)

    def select(self, rows: Tensor) -> KNNMemory:
        """A memory whose row r holds what row rows[r] holds (beam search reorders and copies
        hypotheses, batched generation drops finished rows)."""
        return KNNMemory._gather([(self, row) for row in rows.tolist()])

    @classmethod
    def stack(cls, memories: list[KNNMemory]) -> KNNMemory:
        """One memory of the rows of all `memories`, in order."""
        return cls._gather([(memory, row) for memory in memories for row in range(memory.batch)])

    @staticmethod
    def _gather(sources: list[tuple[KNNMemory, int]]) -> KNNMemory:
        """A memory whose row r holds what row sources[r][1] of memory sources[r][0] holds
        (slots are where they were: a slot depends only on the entry's place in its song)."""
        first = sources[0][0]
        memory = KNNMemory(
            len(sources), first.n_head, first.head_dim, first.max_memories, first.device
        )
        capacity = max(source.keys.shape[2] for source, _ in sources)

        def rows(side: str) -> Tensor:
            return torch.stack(
                [
                    F.pad(getattr(source, side)[row], (0, 0, 0, capacity - source.keys.shape[2]))
                    for source, row in sources
                ]
            )

        memory.keys, memory.values = rows("keys"), rows("values")
        memory.doc = torch.stack([source.doc[row] for source, row in sources])
        memory.count = [source.count[row] for source, row in sources]
        return memory

    # -- reading --

    def lookup(self, queries: Tensor, doc: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-k inner products and slot ids (B, H, T, k) per query and head; -inf / -1 where
        none. Only queries of the song the row holds may retrieve; the others get nothing."""
        b_, h_, t_, _ = queries.shape
        sizes = [self.size(row) for row in range(b_)]
        used = max(sizes, default=0)
        if used == 0:
            scores = torch.full((b_, h_, t_, k), -torch.inf, device=queries.device)
            return scores, torch.full((b_, h_, t_, k), -1, device=queries.device)
        asked = queries.detach().to(self.device, torch.float32)
        block = max(k, self.SCORES_PER_BLOCK // (b_ * h_ * t_))
        scores = torch.full((b_, h_, t_, k), -torch.inf, device=self.device)
        ids = torch.full((b_, h_, t_, k), -1, dtype=torch.int64, device=self.device)
        for start in range(0, used, block):
            stop = min(used, start + block)
            rows = [row for row, size in enumerate(sizes) if size > start]
            # only the rows with entries here: a row searches its own fill, not the fullest's
            pick = slice(None) if len(rows) == b_ else torch.tensor(rows, device=self.device)
            found = asked[pick] @ self.keys[pick, :, start:stop].transpose(-1, -2)
            for i, row in enumerate(rows):  # a row that holds fewer: its empty slots
                if sizes[row] < stop:  # can't be found
                    found[i, :, :, sizes[row] - start :] = -torch.inf
            found, slots = found.topk(min(k, stop - start), dim=-1)
            # this block's best against the best so far
            found, best = torch.cat([scores[pick], found], -1).topk(k, dim=-1)
            scores[pick] = found
            ids[pick] = torch.cat([ids[pick], slots + start], -1).gather(-1, best)
        asking = (doc.to(self.device) == self.doc.to(self.device)[:, None])[:, None, :, None]
        real = asking & (scores > -torch.inf)
        return scores.masked_fill(~real, -torch.inf), ids.masked_fill(~real, -1)

    def fetch(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """The keys and values (B, H, T, k, Dh) in slots `ids`. Where an id is -1 they hold
        some slot's (or zeros): a hit that was not found must be masked (`search` says which)."""
        b_, h_, t_, k = ids.shape
        if self.keys.shape[2] == 0:
            zeros = torch.zeros(b_, h_, t_, k, self.head_dim, device=self.device)
            return zeros, zeros.clone()
        ids = ids.to(self.device)
        rows = torch.arange(b_ * h_, device=self.device).view(b_, h_, 1, 1) * self.keys.shape[2]
        flat = (ids.clamp(min=0) + rows).flatten()  # into the (B * H * capacity, Dh) stores
        return tuple(
            store.view(-1, self.head_dim).index_select(0, flat).view(b_, h_, t_, k, self.head_dim)
            for store in (self.keys, self.values)
        )

    def search(self, queries: Tensor, doc: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """Retrieved keys, values (B, H, T, k, Dh) and which hits are real (B, H, T, k)."""
        if queries.shape[0] != self.batch:
            raise ValueError(
                f"kNN memory holds {self.batch} rows, got a batch of {queries.shape[0]}"
            )
        _, ids = self.lookup(queries, doc, k)
        keys, values = self.fetch(ids)
        return keys, values, (ids >= 0).to(queries.device)

    # -- checkpoints (plain tensors, so torch.load(weights_only=True) works) --

    def state_dict(self) -> dict:
        rows = [self.stored(row) for row in range(self.batch)]
        return {
            "doc": self.doc.clone(),
            "keys": [k.cpu().clone() for k, _ in rows],
            "values": [v.cpu().clone() for _, v in rows],
        }

    @classmethod
    def from_state_dict(
        cls, state: dict, max_memories: int, device: torch.device | str = "cpu"
    ) -> KNNMemory:
        keys, values = state["keys"], state["values"]
        memory = cls(len(keys), keys[0].shape[0], keys[0].shape[2], max_memories, device)
        memory.doc = state["doc"].clone()
        for row, (k, v) in enumerate(zip(keys, values, strict=True)):
            memory.add(row, k, v)
        return memory


# ---- everything one segment hands to the next --------------------------------------------------


class MemorySlot(Protocol):
    """What one memory keeps between segments (a kNN memory, say), in `MemoryState.slots`
    under its memory's `slot` name: the state moves it with its rows and saves it."""

    def select(self, rows: Tensor) -> MemorySlot:
        """Row r of the result holds what row rows[r] holds."""
        ...

    @classmethod
    def stack(cls, slots: list[MemorySlot]) -> MemorySlot:
        """One slot of the rows of all `slots`, in order."""
        ...

    def state_dict(self) -> dict:
        """Plain tensors, so that torch.load(weights_only=True) reads it back."""
        ...


@dataclass
class MemoryState:
    """Where every row's stream stands after a segment, and what it left for the next.

    `offset` is the stream position of the next token (the same for all rows); `last_doc`,
    `song_start` and `last_tokens` let the next segment know whether its first tokens continue
    a song, where that song began and which tokens came just before (model.previous_tokens).
    `past` holds the keys/values attention reaches back to beyond the current tokens: what
    Transformer-XL keeps of earlier segments, and while generating, the segment's own tokens
    so far (the key/value cache of every model). `slots` holds what each other memory keeps,
    by its name (transformer.py: `Memory.slot`), e.g. the kNN memory, updated in place (an
    index is too big to copy every segment).
    """

    offset: int
    last_doc: Tensor  # (B,) song id of each row's previous token
    song_start: Tensor  # (B,) stream position where that song began
    last_tokens: Tensor  # (B, model.previous_tokens) each row's last tokens
    past: PastKeyValues | None = None
    slots: dict[str, MemorySlot] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.last_doc.shape[0]

    def select(self, rows: Tensor) -> MemoryState:
        """Row r of the result continues row rows[r]'s stream (beam search hypotheses)."""
        return MemoryState(
            self.offset,
            self.last_doc[rows],
            self.song_start[rows],
            self.last_tokens[rows],
            None if self.past is None else self.past.select(rows),
            {name: slot.select(rows) for name, slot in self.slots.items()},
        )

    @classmethod
    def stack(cls, states: list[MemoryState]) -> MemoryState:
        """One state of the rows of all `states`, their streams moved to end together at the
        furthest offset, so that the rows' next tokens share one stream position (batched
        generation of prompts of different lengths). Attention sees positions only as
        distances inside a song, and each row's song start moves with it, so a row computes
        exactly what it would alone."""
        offset = max(state.offset for state in states)
        past = None
        if states[0].past is not None:
            offsets = [state.offset for state in states]
            past = PastKeyValues.stack([state.past for state in states], offsets, offset)
        slots = {
            name: type(slot).stack([state.slots[name] for state in states])
            for name, slot in states[0].slots.items()
        }
        return cls(
            offset,
            torch.cat([state.last_doc for state in states]),
            torch.cat([state.song_start + offset - state.offset for state in states]),
            torch.cat([state.last_tokens for state in states]),
            past,
            slots,
        )

    def state_dict(self) -> dict:
        return {
            "offset": self.offset,
            "last_doc": self.last_doc.cpu(),
            "song_start": self.song_start.cpu(),
            "last_tokens": self.last_tokens.cpu(),
            "past": None if self.past is None else self.past.state_dict(),
            "slots": {name: slot.state_dict() for name, slot in self.slots.items()},
        }

    @classmethod
    def from_state_dict(
        cls,
        state: dict,
        loaders: dict[str, Callable[[dict, torch.device | str], MemorySlot]],
        device: torch.device | str = "cpu",
    ) -> MemoryState:
        """The state `state_dict` saved; `loaders` reads each slot back (by its name)."""
        past = state["past"]
        return cls(
            int(state["offset"]),
            state["last_doc"].to(device),
            state["song_start"].to(device),
            state["last_tokens"].to(device),
            None if past is None else PastKeyValues.from_state_dict(past, device),
            {name: loaders[name](saved, device) for name, saved in state["slots"].items()},
        )
