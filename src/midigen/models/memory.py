"""Memories a segment leaves for the next one: XL (recent keys/values) and kNN (the whole song).

Both are tagged with the song (`doc`) each entry came from. The model masks every memory entry
whose song differs from the query's, which is what "a song boundary clears that row's memory"
means, exactly and per row, without touching the other rows. Nothing here carries a gradient:
memories are detached tensors (XL) or plain storage plus a Faiss index (kNN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from midigen.errors import MidigenError

NO_DOC = -(2**62)  # song id of "nothing seen yet"; real ids are >= -1 (padding is -1)


# ---- XL: the last few hundred keys/values of every layer ---------------------------------------


@dataclass
class XLMemory:
    """Per layer, the keys/values of the row's last `length` tokens (Transformer-XL).

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

    def with_room(self, capacity: int) -> XLMemory:
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
        return XLMemory(*self._used(buffers, used), self.doc, self.pos, buffers)

    @staticmethod
    def _used(buffers: tuple[list[Tensor], list[Tensor]], used: int) -> list[list[Tensor]]:
        return [[b[:, :, :used] for b in side] for side in buffers]

    def select(self, rows: Tensor) -> XLMemory:
        """Row r of the result is row rows[r] (beam search reorders and copies hypotheses)."""
        if self.buffers is None:
            keys, values = [k[rows] for k in self.keys], [v[rows] for v in self.values]
            return XLMemory(keys, values, self.doc[rows], self.pos)
        buffers = ([b[rows] for b in self.buffers[0]], [b[rows] for b in self.buffers[1]])
        return XLMemory(*self._used(buffers, len(self.pos)), self.doc[rows], self.pos, buffers)

    def newest(self, length: int) -> XLMemory:
        """The memory of the newest `length` positions (self when it holds no more)."""
        return XLMemory.extend(self, self.keys, self.values, self.doc, self.pos, length)

    @staticmethod
    def stack(memories: list[XLMemory], offsets: list[int], offset: int) -> XLMemory:
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
                raise ValueError("XLMemory.stack needs memories of their streams' newest keys")
        return XLMemory(keys, values, doc, pos)

    @staticmethod
    def extend(
        previous: XLMemory | None,
        keys: list[Tensor],
        values: list[Tensor],
        doc: Tensor,
        pos: Tensor,
        length: int,
    ) -> XLMemory:
        """The memory after a segment: the newest `length` of the positions it attended to.
        `keys` and `values` (per layer, detached: `previous.append`'s results), `doc` (B, S)
        and `pos` (S,) describe all of those: `previous`'s, then the segment's own."""
        if len(pos) > length:  # drop the oldest
            keys, values = [k[:, :, -length:] for k in keys], [v[:, :, -length:] for v in values]
            return XLMemory(keys, values, doc[:, -length:], pos[-length:])
        buffers = None if previous is None else previous.buffers
        if buffers is not None and len(pos) > buffers[0][0].shape[2]:
            buffers = None  # `append` had no room: it copied
        return XLMemory(keys, values, doc, pos, buffers)


def hide_older(doc: Tensor, rows: list[int], length: int) -> Tensor:
    """`doc` (B, M) with every entry of `rows` but the newest `length` marked as no song's, so
    that those rows no longer see them (the other rows keep them)."""
    hidden = doc.clone()
    hidden[rows, : max(0, doc.shape[1] - length)] = NO_DOC
    return hidden


# ---- kNN: every key/value of the current song, searched by Faiss -------------------------------


def retrieve_bruteforce(queries: Tensor, keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k keys by inner product, in plain torch: the reference the Faiss path must match.

    queries (..., T, Dh), keys (..., N, Dh) -> scores and ids, both (..., T, min(k, N)).
    """
    scores, ids = (queries.float() @ keys.float().transpose(-1, -2)).topk(
        min(k, keys.shape[-2]), dim=-1
    )
    return scores, ids


def _faiss():
    """Imported lazily, so models without kNN memory don't need Faiss installed."""
    try:
        import faiss
    except ImportError as error:
        raise MidigenError(
            "model.memory xl_knn needs Faiss: pip install faiss-cpu (or a faiss-gpu build)"
        ) from error
    return faiss


class KNNMemory:
    """Per batch row, every past key/value of that row's current song (Memorizing Transformers).

    The keys and values are kept as float32 tensors (the source of truth, and what a
    checkpoint saves); a Faiss inner-product index per (row, head) holds the keys too and only
    finds them: retrieval is per query and head by the inner product, the score attention
    gives (the kNN layer hands over unit keys and temperature-scaled queries, so that is its
    cosine similarity). Faiss runs on the GPU when the memory lives on CUDA and faiss-gpu is
    installed, on the CPU otherwise.
    A row holds one song: writing a different song resets it, and queries of any other song get
    nothing back. When a row exceeds `max_memories`, the oldest entries are dropped.
    """

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
        faiss = _faiss()
        gpu = self.device.type == "cuda" and hasattr(faiss, "StandardGpuResources")
        self._resources = faiss.StandardGpuResources() if gpu else None
        self.doc = torch.full((batch,), NO_DOC, dtype=torch.int64)
        # per row (H, capacity, Dh) buffers that grow by doubling; the first `count` are used
        self._keys = [self._buffer(0) for _ in range(batch)]
        self._values = [self._buffer(0) for _ in range(batch)]
        self.count = [0] * batch
        self.indexes = [[self._new_index() for _ in range(n_head)] for _ in range(batch)]

    def _buffer(self, capacity: int) -> Tensor:
        return torch.zeros(self.n_head, capacity, self.head_dim, device=self.device)

    def _new_index(self):
        faiss = _faiss()
        if self._resources is not None:
            return faiss.GpuIndexFlatIP(self._resources, self.head_dim)
        return faiss.IndexFlatIP(self.head_dim)

    def size(self, row: int) -> int:
        return self.count[row]

    def stored(self, row: int) -> tuple[Tensor, Tensor]:
        """The row's keys and values, (H, N, Dh) each, oldest first."""
        n = self.count[row]
        return self._keys[row][:, :n], self._values[row][:, :n]

    # -- writing --

    def clear(self, row: int) -> None:
        self.count[row] = 0
        for index in self.indexes[row]:
            index.reset()

    def add(self, row: int, keys: Tensor, values: Tensor) -> None:
        """Append (H, n, Dh) keys/values to a row, dropping the oldest beyond max_memories."""
        keys = keys.detach().to(self.device, torch.float32)[:, -self.max_memories :]
        values = values.detach().to(self.device, torch.float32)[:, -self.max_memories :]
        n, count = keys.shape[1], self.count[row]
        drop = max(0, count + n - self.max_memories)
        if drop:  # shift out the oldest; a flat index can't drop them everywhere: rebuild it
            kept = count - drop
            for buffer in (self._keys[row], self._values[row]):
                buffer[:, :kept] = buffer[:, drop:count].clone()
            count = kept
            for index in self.indexes[row]:
                index.reset()
        if count + n > self._keys[row].shape[1]:  # grow by doubling: appends stay cheap
            capacity = min(self.max_memories, max(2 * self._keys[row].shape[1], count + n))
            for name in ("_keys", "_values"):
                grown = self._buffer(capacity)
                grown[:, :count] = getattr(self, name)[row][:, :count]
                getattr(self, name)[row] = grown
        self._keys[row][:, count : count + n] = keys
        self._values[row][:, count : count + n] = values
        self.count[row] = count + n
        fresh = (self._keys[row][:, : count + n] if drop else keys).cpu().numpy()
        for h, index in enumerate(self.indexes[row]):
            index.add(np.ascontiguousarray(fresh[h]))

    def write(
        self, keys: Tensor, values: Tensor, doc: Tensor, rows: list[int] | None = None
    ) -> None:
        """Store a finished segment's (B, H, T, Dh) keys/values: per row (of `rows`; None: all),
        its last song only.

        A row whose last song differs from the one in memory is reset first, so a new song
        starts from nothing. Padding (doc -1) is never stored.
        """
        doc = doc.cpu()
        for row in range(self.batch) if rows is None else rows:
            last = int(doc[row, -1])
            if last != int(self.doc[row]):
                self.clear(row)
                self.doc[row] = last
            if last < 0:
                continue
            mine = (doc[row] == last).to(keys.device)
            self.add(row, keys[row][:, mine], values[row][:, mine])

    def select(self, rows: list[int]) -> KNNMemory:
        """A memory whose row r holds what row rows[r] holds (beam search reorders and copies
        hypotheses, batched generation drops finished rows)."""
        return KNNMemory.stack([(self, row) for row in rows])

    @staticmethod
    def stack(sources: list[tuple[KNNMemory, int]]) -> KNNMemory:
        """A memory whose row r holds what row sources[r][1] of memory sources[r][0] holds.
        Rows are rebuilt from the stored keys: a Faiss index cannot be copied."""
        first = sources[0][0]
        memory = KNNMemory(
            len(sources), first.n_head, first.head_dim, first.max_memories, first.device
        )
        for row, (source, source_row) in enumerate(sources):
            memory.doc[row] = source.doc[source_row]
            if source.count[source_row]:
                memory.add(row, *source.stored(source_row))
        return memory

    # -- reading --

    def lookup(self, queries: Tensor, doc: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-k inner products and ids (B, H, T, k) per query and head; -inf / -1 where none.

        Only queries of the song the row holds may retrieve; the others get nothing.
        """
        b_, h_, t_, _ = queries.shape
        scores = np.full((b_, h_, t_, k), -np.inf, np.float32)  # filled in numpy: indexing a
        ids = np.full((b_, h_, t_, k), -1, np.int64)  # tensor per (row, head) costs more
        asked = queries.detach().float().cpu().numpy()
        asking = (doc.cpu() == self.doc[:, None]).numpy()  # (B, T)
        for row in range(b_):
            found = min(k, self.size(row))
            if found == 0 or not asking[row].any():
                continue
            which = slice(None) if asking[row].all() else asking[row]
            for h, index in enumerate(self.indexes[row]):
                s, i = index.search(np.ascontiguousarray(asked[row, h, which]), found)
                scores[row, h, which, :found] = s
                ids[row, h, which, :found] = i
        return torch.from_numpy(scores), torch.from_numpy(ids)

    def fetch(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """The raw keys and values (B, H, T, k, Dh) behind `ids`: zeros in a row with nothing
        stored; where an id is -1 in another row, some stored entry (`search`'s mask drops it)."""
        ids = ids.to(self.device)
        keys = torch.empty(*ids.shape, self.head_dim, device=self.device)
        values = torch.empty_like(keys)
        for row in range(self.batch):
            if self.count[row] == 0:
                keys[row], values[row] = 0, 0
                continue
            capacity = self._keys[row].shape[1]
            offsets = torch.arange(self.n_head, device=self.device)[:, None, None] * capacity
            flat = (ids[row].clamp(min=0) + offsets).flatten()
            for store, out in ((self._keys[row], keys), (self._values[row], values)):
                torch.index_select(
                    store.view(-1, self.head_dim), 0, flat, out=out[row].view(-1, self.head_dim)
                )
        return keys, values

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


@dataclass
class MemoryState:
    """Where every row's stream stands after a segment, and the memories it left.

    `offset` is the stream position of the next token (the same for all rows); `last_doc`,
    `song_start` and `last_tokens` let the next segment know whether its first tokens continue
    a song, where that song began and which tokens came just before (model.previous_tokens).
    `xl` and `knn` hold what the model's memories keep (transformer.py: XLRecurrence,
    KNNRetrieval; a vanilla model has neither, but generation's key/value cache uses `xl` for
    every model).
    The kNN memory is updated in place (an index is too big to copy every segment).
    """

    offset: int
    last_doc: Tensor  # (B,) song id of each row's previous token
    song_start: Tensor  # (B,) stream position where that song began
    xl: XLMemory | None = None
    knn: KNNMemory | None = None
    last_tokens: Tensor | None = None  # (B, model.previous_tokens) each row's last tokens

    @property
    def batch(self) -> int:
        return self.last_doc.shape[0]

    def select(self, rows: Tensor) -> MemoryState:
        """Row r of the result continues row rows[r]'s stream (beam search hypotheses)."""
        return MemoryState(
            self.offset,
            self.last_doc[rows],
            self.song_start[rows],
            None if self.xl is None else self.xl.select(rows),
            None if self.knn is None else self.knn.select(rows.tolist()),
            self.last_tokens[rows],
        )

    @classmethod
    def stack(cls, states: list[MemoryState]) -> MemoryState:
        """One state of the rows of all `states`, their streams moved to end together at the
        furthest offset, so that the rows' next tokens share one stream position (batched
        generation of prompts of different lengths). Attention sees positions only as
        distances inside a song, and each row's song start moves with it, so a row computes
        exactly what it would alone."""
        offset = max(state.offset for state in states)
        xl = None
        if states[0].xl is not None:
            offsets = [state.offset for state in states]
            xl = XLMemory.stack([state.xl for state in states], offsets, offset)
        knn = None
        if states[0].knn is not None:
            knn = KNNMemory.stack(
                [(state.knn, row) for state in states for row in range(state.batch)]
            )
        return cls(
            offset,
            torch.cat([state.last_doc for state in states]),
            torch.cat([state.song_start + offset - state.offset for state in states]),
            xl,
            knn,
            torch.cat([state.last_tokens for state in states]),
        )

    def state_dict(self) -> dict:
        xl = (
            None
            if self.xl is None
            else {
                "keys": [k.cpu() for k in self.xl.keys],
                "values": [v.cpu() for v in self.xl.values],
                "doc": self.xl.doc.cpu(),
                "pos": self.xl.pos.cpu(),
            }
        )
        return {
            "offset": self.offset,
            "last_doc": self.last_doc.cpu(),
            "song_start": self.song_start.cpu(),
            "xl": xl,
            "knn": None if self.knn is None else self.knn.state_dict(),
            "last_tokens": self.last_tokens.cpu(),
        }

    @classmethod
    def from_state_dict(
        cls, state: dict, max_memories: int, device: torch.device | str = "cpu"
    ) -> MemoryState:
        xl = state["xl"]
        if xl is not None:
            xl = XLMemory(
                [k.to(device) for k in xl["keys"]],
                [v.to(device) for v in xl["values"]],
                xl["doc"].to(device),
                xl["pos"].to(device),
            )
        knn = state["knn"]
        if knn is not None:
            knn = KNNMemory.from_state_dict(knn, max_memories, device)
        return cls(
            int(state["offset"]),
            state["last_doc"].to(device),
            state["song_start"].to(device),
            xl,
            knn,
            state["last_tokens"].to(device),
        )
