"""The memory path end to end, pinned by weights set by hand, and the kNN layer against a
hand-written reference.

The copy circuit: every token carries a tag (its bar position, here its index in the song), so
the second copy of a song played twice finds the token to predict as the key whose tag is one
more than its own, wherever that key is. One attention layer does it: queries ask for tag t + 1,
keys say their tag, values say their token, and the tied output head reads the token back. Only
a memory that reaches back a whole song can serve it, so the repeat probe must show the second
copy far below the first for xl (XL memory >= the song) and xl_knn (kNN memory), and no gain for
vanilla (a segment shorter than the song).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from midigen.data.corpus import Shard
from midigen.encodings.index import Index
from midigen.encodings.scores import Vocab
from midigen.evaluation.likelihood import repeat_probe
from midigen.models.memory import KNNMemory
from midigen.models.transformer import Context, KNNAttention, ModelConfig, MusicTransformer

VOCAB = Vocab(max_duration=8)
SONG = 100  # tokens per song, <sos> and <eos> included: also the number of tags
SEGMENT = 32  # shorter than a song: the first copy is out of the segment's reach


def copy_circuit(memory: str, xl_mem_len: int) -> MusicTransformer:
    """Two layers, one head: layer 0 does nothing, layer 1 copies by tag (see the docstring)."""
    v = len(VOCAB)
    config = ModelConfig(
        vocab_size=v, n_layer=2, n_head=1, d_model=256, d_ff=16, dropout=0.0,
        segment_len=SEGMENT, bar_pos_size=SONG, max_distance=1024, memory=memory,
        xl_mem_len=xl_mem_len, knn_layer=1, knn_k=8,
    )  # fmt: skip
    model = MusicTransformer(config).eval()
    d = config.d_model
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.tok_emb.weight[:, :v] = torch.eye(v)  # token a -> dim a (the head reads it back)
        model.bar_emb.weight[:, v : v + SONG] = torch.eye(SONG)  # tag t -> dim v + t
        # a two-hot input: LayerNorm with this bias maps it to exactly `hot` times itself
        mean, hot = 2 / d, 1 / math.sqrt(2 / d - 4 / d**2 + 1e-5)
        attn = model.blocks[1].attn
        model.blocks[1].ln1.weight.fill_(1.0)
        model.blocks[1].ln1.bias.fill_(mean * hot)
        q, k, val = attn.qkv.weight.view(3, d, d)
        beta = 40.0  # a match scores beta^2 / sqrt(d) = 100 in local attention
        for t in range(SONG - 1):
            q[t + 1, v + t] = beta / hot  # tag t asks for tag t + 1
        for t in range(SONG):
            k[t, v + t] = beta / hot  # tag t says t
        val[:v, :v] = torch.eye(v) / hot  # the value is the token
        attn.proj.weight[:v, :v] = 8 * torch.eye(v)
        if isinstance(attn, KNNAttention):
            attn.memory_bias.fill_(0.0)  # a hit weighs as much as a local key
            attn.log_temperature.fill_(math.log(100.0))  # cosine 1 scores 100, 0 scores 0
        model.ln_f.weight.fill_(1.0)
    return model


def songs_shard(n: int, seed: int = 0) -> Shard:
    """n songs of random notes; each token's bar position is its index in the song (its tag)."""
    rng = np.random.default_rng(seed)
    songs = [
        np.concatenate([[VOCAB.sos], VOCAB.note(rng.integers(40, 80, SONG - 2)), [VOCAB.eos]])
        for _ in range(n)
    ]
    tokens = np.concatenate(songs)
    tags = np.tile(np.arange(SONG), n)
    return Shard(tokens, tags, tags, np.arange(n + 1) * SONG, [{}] * n)


@pytest.mark.parametrize(
    ("memory", "xl_mem_len", "copies"),
    [("none", 1, False), ("xl", 2 * SONG, True), ("xl", SEGMENT, False), ("xl_knn", SEGMENT, True)],
)
def test_copy_circuit_copies_exactly_where_memory_reaches(memory, xl_mem_len, copies):
    probe = repeat_probe(copy_circuit(memory, xl_mem_len), songs_shard(6), Index(VOCAB), 3)
    assert probe["first"] > 2.5  # nothing to copy from: about chance over the 40 pitches
    if copies:
        assert probe["second"] < 0.1 * probe["first"]
    else:
        assert probe["second"] > 0.9 * probe["first"]


# ---- the kNN layer against a reference written out by hand ------------------------------------


def knn_reference(q, local_keys, stored_keys, stored_values, k, memory_bias, local):
    """One row, per head and query t: the top-k stored keys by q·key/√d; one softmax over the
    local keys 0..t and those hits (+ the head's memory bias); its memory part, sum of weight x
    value over the hits, plus `local` (the local part's output) times the local keys' weight."""
    heads, length, dim = q.shape
    out = torch.empty_like(local)
    for h in range(heads):
        b = float(memory_bias[h].detach())
        for t in range(length):
            stored = torch.stack([q[h, t] @ key for key in stored_keys[h]]) / math.sqrt(dim)
            top = stored.topk(k).indices
            here = torch.stack([q[h, t] @ key for key in local_keys[h, : t + 1]]) / math.sqrt(dim)
            weights = torch.softmax(torch.cat([here, stored[top] + b]), 0)
            memory = (weights[t + 1 :, None] * stored_values[h, top]).sum(0)
            out[h, t] = memory + weights[: t + 1].sum() * local[h, t]
    return out


def test_knn_attention_equals_hand_written_reference():
    torch.manual_seed(0)
    heads, dim, length, k = 2, 8, 5, 4
    config = ModelConfig(n_head=heads, d_model=heads * dim, knn_k=k, memory="xl_knn")
    layer = KNNAttention(config)
    with torch.no_grad():
        layer.memory_bias.copy_(torch.tensor([1.5, -0.5]))
    stored_keys, stored_values = torch.randn(heads, 30, dim), torch.randn(heads, 30, dim)
    memory = KNNMemory(batch=2, n_head=heads, head_dim=dim, max_memories=100)
    memory.doc[0] = 3
    memory.add(0, stored_keys, stored_values)  # row 1 holds nothing: local attention alone
    q, local = 2 * torch.randn(2, heads, length, dim), torch.randn(2, heads, length, dim)
    local_keys = torch.randn(2, heads, length, dim)
    doc = torch.full((2, length), 3)
    ctx = Context(mask=None, bias=None, doc=doc, slots={"knn": memory})
    out = layer.mix(q, local, local_keys, None, ctx)  # mask None: causal
    want = knn_reference(
        q[0], local_keys[0], stored_keys, stored_values, k, layer.memory_bias, local[0]
    )
    torch.testing.assert_close(out[0], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], local[1])


def test_knn_layer_compares_by_cosine_times_temperature():
    """Locally as in memory: q·k/√d of what the layer hands on is cosine x temperature."""
    layer = KNNAttention(ModelConfig(n_head=2, d_model=16, memory="xl_knn"))
    with torch.no_grad():
        layer.log_temperature.copy_(torch.tensor([0.0, math.log(7.0)]))
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    q_used, k_used = layer.similarity(q, k)
    score = (q_used @ k_used.transpose(-1, -2)) / math.sqrt(8)
    cosine = F.cosine_similarity(q[..., :, None, :], k[..., None, :, :], dim=-1)
    torch.testing.assert_close(score, cosine * torch.tensor([1.0, 7.0])[:, None, None])


def test_untrained_memory_gets_little_weight():
    """An untrained memory costs almost nothing: a hit as good as every local key gets a
    twentieth of a local key's weight."""
    layer = KNNAttention(ModelConfig(memory="xl_knn"))
    assert (layer.memory_bias.exp() < 0.06).all()
