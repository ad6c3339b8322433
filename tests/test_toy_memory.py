"""Adding a memory is adding one class: a toy memory, defined here alone, trains, evaluates,
saves, reloads and generates through the project's own functions (issue 28).

The toy keeps, per row, the mean key and value of each of the row's last FIFO_SIZE complete
segments of its current song, and its layer joins them to local attention in one softmax.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import random_shards, tiny_params, trainer

from midigen.data.corpus import load_shard
from midigen.encodings.catalog import load_scheme
from midigen.evaluation.likelihood import score_model
from midigen.generation.contexts import KVCache
from midigen.generation.prompts import split_song
from midigen.generation.sampling import GenerateConfig, generate, generate_batch
from midigen.models import variants
from midigen.models.kernels import knn_attention, local_logsumexp
from midigen.models.memory import NO_DOC, MemoryState
from midigen.models.transformer import (
    MEMORY_KINDS,
    Attention,
    Context,
    Memory,
    ModelConfig,
    SegmentTrace,
)
from midigen.models.variants import load_trained

FIFO_SIZE = 3
TOY = "pooled_fifo"


@dataclass
class PooledSlot:
    """Per row the pooled keys and values (B, H, FIFO_SIZE, Dh) of its last segments, oldest
    first, and the song of each (B, FIFO_SIZE); NO_DOC where empty."""

    keys: torch.Tensor
    values: torch.Tensor
    doc: torch.Tensor

    def select(self, rows: torch.Tensor) -> PooledSlot:
        return PooledSlot(self.keys[rows], self.values[rows], self.doc[rows])

    @classmethod
    def stack(cls, slots: list[PooledSlot]) -> PooledSlot:
        return cls(*(torch.cat([getattr(s, f) for s in slots]) for f in ("keys", "values", "doc")))

    def state_dict(self) -> dict:
        return {"keys": self.keys.cpu(), "values": self.values.cpu(), "doc": self.doc.cpu()}


class PooledAttention(Attention):
    """Local attention plus the pooled entries of the query's own song, in one softmax."""

    def mix(self, q, local, keys, mask, ctx: Context):
        slot = ctx.slots[PooledFIFO.slot]
        b_, h_, t_, _ = q.shape
        found = (slot.doc[:, None, :] == ctx.doc[:, :, None])[:, None].expand(b_, h_, t_, -1)
        hits = [side[:, :, None].expand(b_, h_, t_, -1, -1) for side in (slot.keys, slot.values)]
        memory, memory_lse = knn_attention(q, *hits, found, torch.zeros(h_))
        share = (memory_lse - local_logsumexp(q, keys, mask)).sigmoid()[..., None]
        return torch.where(found.any(-1, keepdim=True), local + share * (memory - local), local)


class PooledFIFO(Memory):
    slot = "pooled"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim

    def attention(self, layer: int):
        return PooledAttention if layer == 0 else None

    def start(self, state: MemoryState) -> MemoryState:
        shape = (state.batch, self.n_head, FIFO_SIZE, self.head_dim)
        empty = PooledSlot(
            torch.zeros(shape), torch.zeros(shape), torch.full((state.batch, FIFO_SIZE), NO_DOC)
        )
        return replace(state, slots={**state.slots, self.slot: empty})

    def remember(self, state: MemoryState, trace: SegmentTrace, rows=None) -> MemoryState:
        """Each chosen row pushes the mean key/value of its segment's last song (if real)."""
        slot, length = state.slots[self.slot], trace.doc.shape[1]
        keys, values = (side[0][:, :, -length:] for side in (trace.keys, trace.values))
        last = trace.doc[:, -1]
        mine = (trace.doc == last[:, None])[:, None, :, None].float()  # (B, 1, T, 1)
        pooled = [(side * mine).sum(2) / mine.sum(2) for side in (keys, values)]  # (B, H, Dh)
        chosen = torch.zeros(state.batch, dtype=torch.bool)
        chosen[slice(None) if rows is None else rows] = True
        chosen &= last >= 0
        doc = torch.where(slot.doc == last[:, None], slot.doc, NO_DOC)  # a new song: forget
        pushed = [
            torch.cat([old[:, :, 1:], new[:, :, None]], 2)
            for old, new in zip((slot.keys, slot.values), pooled, strict=True)
        ]
        keys, values = (
            torch.where(chosen[:, None, None, None], new, old)
            for new, old in zip(pushed, (slot.keys, slot.values), strict=True)
        )
        doc = torch.where(chosen[:, None], torch.cat([doc[:, 1:], last[:, None]], 1), slot.doc)
        return replace(state, slots={**state.slots, self.slot: PooledSlot(keys, values, doc)})

    def load(self, saved: dict, device) -> PooledSlot:
        return PooledSlot(*(saved[f].to(device) for f in ("keys", "values", "doc")))


@pytest.fixture
def toy(monkeypatch) -> str:
    """The toy memory named as a model.memory and as a pipeline variant: nothing else."""
    monkeypatch.setitem(MEMORY_KINDS, TOY, (PooledFIFO,))
    monkeypatch.setitem(variants.VARIANTS, TOY, TOY)
    return TOY


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    return random_shards(root, 12, 3, val_fraction=0.25, test_fraction=0.25)


def test_a_memory_defined_in_a_test_file_trains_evaluates_and_generates(toy, shards, tmp_path):
    run = trainer(shards, tmp_path, toy, tiny_params(steps=8))
    result = run.run()
    assert np.isfinite(result["val_loss"])
    held = run.state.slots["pooled"].doc
    assert (held != NO_DOC).any()  # training's segments went into the memory
    run.save_model(tmp_path / "model.pt")

    scheme = load_scheme(shards)
    model = load_trained(tmp_path / "model.pt", scheme.fields, variant=toy)
    assert isinstance(model.blocks[0].attn, PooledAttention)
    test = load_shard(shards, "test")
    scores = score_model(model, test, scheme, batch_size=2)
    assert len(scores.nll) == len(test.tokens) - len(test.songs) and np.isfinite(scores.nll).all()

    song = test.song(0)
    tokens = torch.as_tensor(test.tokens[song].astype(np.int64))[None]
    bars = torch.as_tensor(test.bar_pos[song].astype(np.int64))[None]
    segment = model.config.segment_len
    assert tokens.shape[1] > 3 * segment
    with torch.no_grad():  # generation's cache sees what training's segments saw
        trained, state = [], None
        for start in range(0, tokens.shape[1], segment):
            piece = slice(start, start + segment)
            logits, _, state = model(tokens[:, piece], bars[:, piece], state=state)
            trained.append(logits)
            if start == segment:  # saved and restored midway, it goes on the same
                state = model.memory_state_from(state.state_dict())
        trained = torch.cat(trained, 1)
        cache = KVCache(model)
        for i in range(tokens.shape[1]):
            fed = cache.feed(tokens[:, i : i + 1], bars[:, i : i + 1])
            torch.testing.assert_close(fed, trained[:, i], atol=1e-5, rtol=1e-5)
        emptied = model.initial_state(1, "cpu")
        alone, _, _ = model(
            tokens[:, -segment:], bars[:, -segment:], state=replace(state, slots=emptied.slots)
        )
        kept, _, _ = model(tokens[:, -segment:], bars[:, -segment:], state=state)
    assert not torch.allclose(alone, kept)  # the layer reads the memory

    prompts = [
        split_song(
            test.tokens[test.song(i)],
            test.times[test.song(i)],
            test.bar_pos[test.song(i)],
            bars,
            4,
            scheme.grammar,
        )[0]
        for i, bars in ((0, 2), (1, 5))
    ]
    config = GenerateConfig(length=3 * segment, min_length=3 * segment, seed=1)
    batched = generate_batch(model, prompts, scheme, config)
    single = [generate(model, p, scheme, config, seed=1 + k) for k, p in enumerate(prompts)]
    assert [g.tokens for g in batched] == [g.tokens for g in single]
    beams = generate(model, prompts[0], scheme, replace(config, beams=2))
    for prompt, generated in zip((*prompts, prompts[0]), (*batched, beams), strict=True):
        assert len(generated.tokens) == 3 * segment
        scheme.grammar.parse([*prompt.tokens.tolist(), *generated.tokens])  # raises if invalid
