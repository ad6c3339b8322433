"""The model and its memories: XL is exact attention over the window it keeps, kNN finds what
brute force finds, songs never see each other, no gradient reaches memory, bad configs stop."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
import torch.nn.functional as F
from builders import TINY_MODEL

from midigen.errors import MidigenError
from midigen.models.kernels import MASKED, BiasedAttention
from midigen.models.memory import KNNMemory, MemoryState
from midigen.models.positions import alibi_slopes
from midigen.models.transformer import (
    KNNAttention,
    KNNRetrieval,
    ModelConfig,
    MusicTransformer,
    XLRecurrence,
)

T = 8  # segment length
V = 40  # vocabulary


def tiny(**overrides) -> MusicTransformer:
    settings = dict(
        TINY_MODEL,
        vocab_size=V,
        dropout=0.0,
        segment_len=T,
        max_distance=64,
        bar_pos_size=16,
        steps_per_beat=4,
        xl_mem_len=T,
    )
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(**{**settings, **overrides})).eval()
    if model.position_bias is not None and hasattr(model.position_bias, "table"):
        torch.nn.init.normal_(model.position_bias.table.weight)  # zeros would hide mistakes
    for block in model.blocks:  # so the kNN half of the mix is not negligible
        if hasattr(block.attn, "memory_bias"):
            torch.nn.init.constant_(block.attn.memory_bias, 1.0)
    return model


def stream(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(3, V, (batch, length), generator=g),
        torch.randint(0, 16, (batch, length), generator=g),
    )


def knn_attention_of(model: MusicTransformer) -> KNNAttention:
    """The model's one kNN layer."""
    (knn,) = [block.attn for block in model.blocks if isinstance(block.attn, KNNAttention)]
    return knn


def run(model: MusicTransformer, tokens, bar_pos, doc, state=None, seg: int = T, cache=None):
    """Feed a (B, L) stream segment by segment; the logits of all of it and the final state.
    `cache`: keep that many past keys/values as generation's cache does, writing no memory."""
    out = []
    for s in range(0, tokens.shape[1], seg):
        piece = tokens[:, s : s + seg], bar_pos[:, s : s + seg], doc[:, s : s + seg], state
        if cache is None:
            logits, _, state = model(*piece)
        else:
            logits, trace = model.read(*piece)
            state = trace.cached(cache)
        out.append(logits)
    return torch.cat(out, dim=1), state


def reference(model: MusicTransformer, tokens, bar_pos, allowed: torch.Tensor) -> torch.Tensor:
    """The model written out by hand (relative bias), over a whole stream with an explicit
    (B, L, L) visibility matrix instead of memories."""
    c = model.config
    x = model.tok_emb(tokens) + model.bar_emb(bar_pos) + model.beat_emb(bar_pos // c.steps_per_beat)
    i = torch.arange(tokens.shape[1])
    rows = c.vocab_size + 1  # per lag: every token, then "none that far back"
    for lag in range(1, c.previous_tokens + 1):
        previous = torch.full_like(tokens, c.vocab_size)  # a song's first tokens: none before
        same_song = allowed[:, i[lag:], i[:-lag]]  # token i - lag is visible from i: same song
        previous[:, lag:] = torch.where(same_song, tokens[:, :-lag], c.vocab_size)
        x = x + model.prev_emb(previous + (lag - 1) * rows)
    bias = model.position_bias.table.weight[(i[:, None] - i[None, :]).clamp(0, c.max_distance)]
    bias = bias.permute(2, 0, 1)  # (H, L, L)
    for block in model.blocks:
        h = block.ln1(x)
        q, k, v = block.attn.qkv(h).split(c.d_model, dim=-1)
        q, k, v = (z.unflatten(-1, (c.n_head, c.head_dim)).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(c.head_dim) + bias
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = x + block.attn.proj(y)
        x = x + block.mlp(block.ln2(x))
    return model.head(model.ln_f(x))


def visible(doc: torch.Tensor, window: int | None) -> torch.Tensor:
    """(B, L, L): causal, same song, and (XL) no further back than the previous `window`
    positions before the query's segment."""
    i = torch.arange(doc.shape[1])
    allowed = (i[None, :] <= i[:, None])[None] & (doc[:, :, None] == doc[:, None, :])
    if window is not None:
        allowed = allowed & (i[None, :] >= (i[:, None] // T) * T - window)[None]
    return allowed


# ---- 1. XL is exact attention over the window it keeps -----------------------------------------


@pytest.mark.parametrize("position", ["relative", "alibi", "absolute"])
def test_xl_second_segment_equals_full_attention(position):
    """Two segments, any depth: segment 1 saw only itself either way, so XL == full causal."""
    model = tiny(memory="xl", n_layer=3, position=position)
    tokens, bar_pos = stream(3, 2 * T)
    doc = torch.zeros_like(tokens)
    doc[1, 5:] = 1  # a song boundary inside segment 1
    doc[2, T + 3 :] = 2  # ... and one inside segment 2
    with torch.no_grad():
        xl, _ = run(model, tokens, bar_pos, doc)
        full, _, _ = model(tokens, bar_pos, doc)
    torch.testing.assert_close(xl, full, atol=1e-5, rtol=1e-5)


def test_xl_with_long_memory_is_a_kv_cache():
    """xl_mem_len covering everything so far: three segments equal one full causal pass."""
    model = tiny(memory="xl", xl_mem_len=2 * T)
    tokens, bar_pos = stream(2, 3 * T, seed=1)
    doc = torch.zeros_like(tokens)
    doc[1, 2 * T - 2 :] = 1
    with torch.no_grad():
        xl, _ = run(model, tokens, bar_pos, doc)
        full, _, _ = model(tokens, bar_pos, doc)
    torch.testing.assert_close(xl, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("previous_tokens", [0, 1, 2])
def test_xl_multilayer_matches_hand_written_reference(previous_tokens):
    """xl_mem_len = T, two layers, four segments: each segment sees itself and the previous one
    at every layer, and the previous one's states saw *their* previous one (the XL recurrence).
    Written out as attention over the whole stream with a banded mask; with token shift, the
    previous token crosses segments within a song and never crosses songs."""
    model = tiny(memory="xl", previous_tokens=previous_tokens)
    tokens, bar_pos = stream(2, 4 * T, seed=2)
    doc = torch.zeros_like(tokens)
    doc[1, T + 3 :] = 1
    with torch.no_grad():
        xl, _ = run(model, tokens, bar_pos, doc)
        ref = reference(model, tokens, bar_pos, visible(doc, window=T))
        full = reference(model, tokens, bar_pos, visible(doc, window=None))
    torch.testing.assert_close(xl, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(xl[:, 2 * T :], full[:, 2 * T :], atol=1e-4)  # the window matters


@pytest.mark.parametrize("memory", ["none", "xl"])
@pytest.mark.parametrize("previous_tokens", [0, 1, 2])
def test_one_token_at_a_time_with_a_cache_equals_one_pass(memory, previous_tokens):
    """Generation's key/value cache: a mem_len covering the context, fed token by token."""
    model = tiny(memory=memory, previous_tokens=previous_tokens)
    tokens, bar_pos = stream(2, 3 * T, seed=15)
    doc = torch.zeros_like(tokens)
    doc[1, 5:] = 1
    with torch.no_grad():
        cached, _ = run(model, tokens, bar_pos, doc, seg=1, cache=3 * T)
        full, _, _ = model(tokens, bar_pos, doc)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_cache_with_room_is_written_in_place():
    """Generation's cache in preallocated buffers: the logits of the copying path, token by
    token across a song boundary, and the buffers are reused while they have room."""
    model = tiny(memory="xl")
    tokens, bar_pos = stream(2, 2 * T, seed=16)
    doc = torch.zeros_like(tokens)
    doc[1, T + 3 :] = 1
    with torch.no_grad():
        _, _, copied = model(tokens[:, :T], bar_pos[:, :T], doc[:, :T])
        roomy = dataclasses.replace(copied, past=copied.past.with_room(2 * T))
        buffer = roomy.past.buffers[0][1]
        for i in range(T, 2 * T):
            step = slice(i, i + 1)
            a, copied = model.read(tokens[:, step], bar_pos[:, step], doc[:, step], copied)
            b, roomy = model.read(tokens[:, step], bar_pos[:, step], doc[:, step], roomy)
            copied, roomy = copied.cached(i + 1), roomy.cached(i + 1)
            torch.testing.assert_close(b, a)
    assert copied.past.buffers is None and roomy.past.buffers[0][1] is buffer
    assert roomy.past.keys[1].data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(roomy.past.keys[1], copied.past.keys[1])


# ---- 2. kNN retrieval ---------------------------------------------------------------------------


def retrieve_bruteforce(queries: torch.Tensor, keys: torch.Tensor, k: int):
    """Top-k keys by inner product, the plainest way: what the memory's search must find.

    queries (..., T, Dh), keys (..., N, Dh) -> scores and ids, both (..., T, min(k, N)).
    """
    return (queries.float() @ keys.float().transpose(-1, -2)).topk(min(k, keys.shape[-2]), -1)


def test_knn_lookup_matches_bruteforce():
    torch.manual_seed(0)
    heads, dim, k = 3, 16, 5
    memory = KNNMemory(batch=3, n_head=heads, head_dim=dim, max_memories=1000)
    stored = [torch.randn(heads, 200, dim), torch.randn(heads, 3, dim), None]
    for row, keys in enumerate(stored):
        memory.doc[row] = 7
        if keys is not None:
            memory.add(row, keys, keys * 2)
    queries = torch.randn(3, heads, 6, dim)
    doc = torch.full((3, 6), 7)
    doc[0, 4:] = 8  # a new song: must retrieve nothing
    scores, ids = memory.lookup(queries, doc, k)

    want_scores, want_ids = retrieve_bruteforce(queries[0], stored[0], k)
    assert torch.equal(ids[0, :, :4], want_ids[:, :4])
    torch.testing.assert_close(scores[0, :, :4], want_scores[:, :4], atol=1e-5, rtol=1e-5)
    assert (ids[0, :, 4:] == -1).all() and torch.isinf(scores[0, :, 4:]).all()
    want_scores, want_ids = retrieve_bruteforce(queries[1], stored[1], k)  # fewer than k stored
    assert torch.equal(ids[1, ..., :3], want_ids) and (ids[1, ..., 3:] == -1).all()
    assert (ids[2] == -1).all()  # nothing stored

    keys, values, found = memory.search(queries, doc, k)
    assert torch.equal(found, ids >= 0)
    hit = stored[0][torch.arange(heads)[:, None, None], ids[0].clamp(min=0)]
    torch.testing.assert_close(keys[0, :, :4], hit[:, :4])
    torch.testing.assert_close(values[0, :, :4], 2 * hit[:, :4])


@pytest.mark.parametrize("block", [KNNMemory.SCORES_PER_BLOCK, 3 * 2 * 4 * 7])
def test_knn_search_is_exact_for_every_row_and_head_as_memories_fill_and_wrap(block, monkeypatch):
    """Rows filled to different depths (one past its limit, so its ring has wrapped, one empty,
    one of another song), written segment by segment, searched in one call (and in blocks of 7
    slots): each query's k hits are the k stored keys brute force ranks first, with their
    scores and values."""
    monkeypatch.setattr(KNNMemory, "SCORES_PER_BLOCK", block)
    torch.manual_seed(2)
    heads, dim, k, limit, segment = 2, 8, 4, 40, 12
    memory = KNNMemory(batch=3, n_head=heads, head_dim=dim, max_memories=limit)
    doc = torch.tensor([[1] * segment, [2] * segment, [-1] * segment])
    for step in range(6):  # row 0: 72 entries through a 40-slot ring; row 1: 12 only
        keys = torch.randn(3, heads, segment, dim)
        memory.write(keys, keys * 3, doc, rows=None if step == 0 else [0])
    assert [memory.size(row) for row in range(3)] == [40, 12, 0]
    queries = torch.randn(3, heads, 5, dim)
    asking = torch.tensor([[1] * 5, [2] * 4 + [9], [3] * 5])  # row 1's last query: another song
    scores, ids = memory.lookup(queries, asking, k)
    keys, values, found = memory.search(queries, asking, k)
    for row, queried in ((0, 5), (1, 4)):
        stored = memory.stored(row)[0]
        want_scores, want_ids = retrieve_bruteforce(queries[row, :, :queried], stored, k)
        torch.testing.assert_close(scores[row, :, :queried], want_scores)
        hits = stored[torch.arange(heads)[:, None, None], want_ids]
        torch.testing.assert_close(keys[row, :, :queried], hits)
        torch.testing.assert_close(values[row, :, :queried], 3 * hits)
        assert found[row, :, :queried].all()
    assert not found[1, :, 4].any() and not found[2].any()
    assert (ids[2] == -1).all() and torch.isinf(scores[2]).all()


def test_knn_memory_drops_the_oldest_beyond_its_limit():
    memory = KNNMemory(batch=1, n_head=2, head_dim=8, max_memories=10)
    memory.doc[0] = 0
    keys = torch.randn(2, 25, 8)
    for s in range(0, 25, 7):
        memory.add(0, keys[:, s : s + 7], keys[:, s : s + 7])
    assert memory.size(0) == 10 and memory.keys.shape[2] == 10  # a ring: no room beyond
    torch.testing.assert_close(memory.stored(0)[0], keys[:, -10:])
    queries = torch.randn(1, 2, 4, 8)
    found, _, _ = memory.search(queries, torch.zeros(1, 4, dtype=torch.int64), 3)
    want = retrieve_bruteforce(queries[0], keys[:, -10:], 3)[1]
    torch.testing.assert_close(found[0], keys[:, -10:][torch.arange(2)[:, None, None], want])


def test_knn_write_keeps_only_the_rows_last_song():
    memory = KNNMemory(batch=2, n_head=1, head_dim=4, max_memories=100)
    doc = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    keys = torch.arange(48.0).reshape(2, 1, 6, 4)
    memory.write(keys, keys, doc)
    memory.write(keys, keys, doc)  # row 0 keeps growing; row 1 keeps song 1 only
    assert memory.size(0) == 12 and memory.size(1) == 6
    torch.testing.assert_close(memory.stored(1)[0], torch.cat([keys[1, :, 3:]] * 2, dim=1))
    memory.write(keys, keys, torch.tensor([[0, 0, 2, 2, 2, 2], [-1] * 6]))
    assert memory.size(0) == 4 and memory.size(1) == 0  # new song / padding: cleared


# ---- 3. a song boundary clears that row's memory ------------------------------------------------


@pytest.mark.parametrize("memory", ["xl", "xl_knn"])
@pytest.mark.parametrize("position", ["relative", "absolute"])
def test_song_after_another_equals_song_alone(memory, position):
    """Row 0 = [A | B B] over 3 segments vs row 0 = [B B] alone: B's logits are identical."""
    model = tiny(memory=memory, position=position, xl_mem_len=2 * T)
    a, a_bar = stream(2, T, seed=3)
    b, b_bar = stream(2, 2 * T, seed=4)
    other, other_bar = stream(2, 3 * T, seed=5)
    after = torch.cat([a[:1], b[:1]], dim=1), torch.cat([a_bar[:1], b_bar[:1]], dim=1)
    tokens = torch.cat([after[0], other[:1]])  # row 1 is some other stream
    bar_pos = torch.cat([after[1], other_bar[:1]])
    doc = torch.tensor([[0] * T + [1] * 2 * T, [9] * 3 * T])
    with torch.no_grad():
        logits, state = run(model, tokens, bar_pos, doc)
        alone, _ = run(
            model,
            torch.cat([b[:1], b[1:]]),
            torch.cat([b_bar[:1], b_bar[1:]]),
            torch.tensor([[5] * 2 * T, [6] * 2 * T]),
        )
    torch.testing.assert_close(logits[0, T:], alone[0], atol=1e-5, rtol=1e-5)
    if memory == "xl_knn":
        assert state.slots["knn"].size(0) == 2 * T  # B's two segments, nothing of A


@pytest.mark.parametrize("memory", ["xl", "xl_knn"])
def test_song_boundary_mid_segment_leaks_nothing(memory):
    """[A (half a segment) | B ...] vs [A' | B ...]: B never sees A, in the segment, in XL memory
    or in the kNN memory, so B's logits don't depend on what A was."""
    model = tiny(memory=memory, n_layer=3, knn_layer=1)
    b, b_bar = stream(2, 4 * T - T // 2, seed=6)
    doc = torch.tensor([[0] * (T // 2) + [1] * b.shape[1]] * 2)
    outs = []
    for seed in (7, 8):
        a, a_bar = stream(2, T // 2, seed=seed)
        with torch.no_grad():
            logits, state = run(model, torch.cat([a, b], 1), torch.cat([a_bar, b_bar], 1), doc)
        outs.append(logits)
    assert not torch.allclose(outs[0][:, : T // 2], outs[1][:, : T // 2])  # A did differ
    torch.testing.assert_close(outs[0][:, T // 2 :], outs[1][:, T // 2 :], atol=1e-5, rtol=1e-5)


def test_knn_memory_changes_the_output():
    """The kNN half is really used: same weights without the look-up give other logits."""
    model = tiny(memory="xl_knn")
    tokens, bar_pos = stream(2, 3 * T, seed=9)
    doc = torch.zeros_like(tokens)
    with torch.no_grad():
        with_knn, _ = run(model, tokens, bar_pos, doc)
        knn_attention_of(model).memory_bias.fill_(-100.0)  # hits weigh nothing
        without, _ = run(model, tokens, bar_pos, doc)
    torch.testing.assert_close(with_knn[:, :T], without[:, :T])  # segment 1: memory empty
    assert not torch.allclose(with_knn[:, T:], without[:, T:], atol=1e-4)


@pytest.mark.parametrize("mask_rows", [1, 3])
def test_biased_attention_equals_sdpa(mask_rows):
    """The CPU training path (learned bias): SDPA's output and gradients, in fewer passes."""
    g = torch.Generator().manual_seed(0)
    b, h, t, m, d = 3, 2, 5, 4, 8
    q, k, v = (torch.randn(b, h, t, d, generator=g, requires_grad=True) for _ in range(3))
    keys = torch.cat([torch.randn(b, h, m, d, generator=g), k], dim=2)  # memory, then own
    values = torch.cat([torch.randn(b, h, m, d, generator=g), v], dim=2)
    bias = torch.randn(h, t, m + t, generator=g, requires_grad=True)
    hidden = torch.rand(mask_rows, 1, t, m + t, generator=g) < 0.3
    mask = torch.zeros(hidden.shape).masked_fill(hidden, MASKED) + bias
    grad_out = torch.randn(b, h, t, d, generator=g)

    expected = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    want = torch.autograd.grad(expected, [q, k, v, bias], grad_out)
    out = BiasedAttention.apply(q, k, v, keys.detach(), values.detach(), mask.detach(), bias)
    got = torch.autograd.grad(out, [q, k, v, bias], grad_out)
    torch.testing.assert_close(out, expected)
    for name, a, e in zip(["q", "k", "v", "bias"], got, want, strict=True):
        torch.testing.assert_close(a, e, msg=lambda m, name=name: f"grad {name}: {m}")


# ---- 4. no gradient reaches memory --------------------------------------------------------------


@pytest.mark.parametrize("memory", ["xl", "xl_knn"])
def test_gradients_stop_at_memory(memory):
    model = tiny(memory=memory).train()
    captured = []
    model.tok_emb.register_forward_hook(lambda m, i, out: captured.append(out))
    tokens, bar_pos = stream(2, 2 * T, seed=10)
    doc = torch.zeros_like(tokens)
    _, _, state = model(tokens[:, :T], bar_pos[:, :T], doc[:, :T])
    for k, v in zip(state.past.keys, state.past.values, strict=True):
        assert not k.requires_grad and k.grad_fn is None and not v.requires_grad
    if memory == "xl_knn":
        assert not any(t.requires_grad for row in range(2) for t in state.slots["knn"].stored(row))
    _, loss, _ = model(
        tokens[:, T:], bar_pos[:, T:], doc[:, T:], state, targets=tokens[:, T:].roll(-1, 1)
    )
    first, second = captured
    grads = torch.autograd.grad(loss, [first, second], allow_unused=True, retain_graph=True)
    assert grads[0] is None  # segment 1's inputs are not in segment 2's graph
    assert grads[1] is not None and grads[1].abs().sum() > 0
    loss.backward()
    if memory == "xl_knn":
        knn = knn_attention_of(model)
        assert knn.memory_bias.grad.abs().sum() > 0  # the memory's weight does learn


# ---- 5. bad configs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(n_head=5), "model.n_head (5) must divide model.d_model (128)"),
        (
            dict(knn_layer=4),
            "model.knn_layer (4) is outside the model: it has 4 layers, so use -4 to 3",
        ),
        (dict(knn_layer=-5), "model.knn_layer (-5) is outside the model"),
        (dict(memory="lstm"), "model.memory must be one of none, xl, xl_knn (got 'lstm')"),
        (dict(position="rope"), "model.position must be one of relative, alibi, absolute"),
        (dict(d_model=0), "model.d_model must be a positive integer (got 0)"),
        (dict(xl_mem_len=-1), "model.xl_mem_len must be a positive integer (got -1)"),
        (dict(previous_tokens=-1), "model.previous_tokens must be an integer >= 0 (got -1)"),
        (dict(previous_tokens=True), "model.previous_tokens must be an integer >= 0 (got True)"),
        (dict(dropout=1.5), "model.dropout must be a number in [0, 1) (got 1.5)"),
    ],
)
def test_bad_config_stops_with_one_clear_message(overrides, message):
    config = ModelConfig(**{"vocab_size": V, "memory": "xl_knn", **overrides})
    with pytest.raises(MidigenError) as error:
        config.validate()
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    with pytest.raises(MidigenError):
        MusicTransformer(config)


# ---- 6. shapes and causality --------------------------------------------------------------------


@pytest.mark.parametrize("memory", ["none", "xl", "xl_knn"])
@pytest.mark.parametrize("position", ["relative", "alibi", "absolute"])
def test_future_tokens_never_change_earlier_logits(memory, position):
    model = tiny(memory=memory, position=position)
    tokens, bar_pos = stream(2, 3 * T, seed=11)
    doc = torch.zeros_like(tokens)
    doc[1, T + 2 :] = 1
    with torch.no_grad():
        logits, _ = run(model, tokens, bar_pos, doc)
        assert logits.shape == (2, 3 * T, V)
        for t in (3, T + 5, 2 * T + 1):
            changed = tokens.clone()
            changed[:, t] = (changed[:, t] + 1) % V
            again, _ = run(model, changed, bar_pos, doc)
            torch.testing.assert_close(again[:, :t], logits[:, :t], atol=0, rtol=0)
            assert not torch.allclose(again[:, t], logits[:, t])


def test_songs_in_one_segment_do_not_see_each_other():
    model = tiny(memory="none")
    tokens, bar_pos = stream(1, T, seed=12)
    doc = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        both, _, _ = model(tokens, bar_pos, doc)
        alone, _, _ = model(tokens[:, 3:], bar_pos[:, 3:])
    torch.testing.assert_close(both[:, 3:], alone, atol=1e-5, rtol=1e-5)


def test_loss_skips_ignored_targets():
    model = tiny()
    tokens, bar_pos = stream(2, T, seed=13)
    targets = tokens.roll(-1, 1)
    targets[:, -3:] = -100
    logits, loss, _ = model(tokens, bar_pos, targets=targets)
    want = F.cross_entropy(logits[:, :-3].flatten(0, 1), targets[:, :-3].flatten())
    torch.testing.assert_close(loss, want)
    _, nothing, _ = model(tokens, bar_pos, targets=torch.full_like(tokens, -100))
    assert nothing.item() == 0


# ---- checkpoints ---------------------------------------------------------------------------------


def test_state_survives_weights_only_checkpoint():
    """Model weights and the memories (XL and kNN) round-trip through torch.load(weights_only)."""
    model = tiny(memory="xl_knn")
    tokens, bar_pos = stream(2, 3 * T, seed=14)
    doc = torch.zeros_like(tokens)
    with torch.no_grad():
        _, state = run(model, tokens[:, : 2 * T], bar_pos[:, : 2 * T], doc[:, : 2 * T])
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "memory": state.state_dict()}, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        again = tiny(memory="xl_knn")
        again.load_state_dict(saved["model"])
        restored = again.memory_state_from(saved["memory"])
        assert isinstance(restored, MemoryState)
        want, _, _ = model(tokens[:, 2 * T :], bar_pos[:, 2 * T :], doc[:, 2 * T :], state)
        got, _, _ = again(tokens[:, 2 * T :], bar_pos[:, 2 * T :], doc[:, 2 * T :], restored)
    torch.testing.assert_close(got, want)


def test_relative_bias_starts_local():
    """The learned table starts as ALiBi: nearer keys score higher in every head, so memory
    keys do not dilute attention before the table has learned anything (see RelativeBias)."""
    model = MusicTransformer(ModelConfig(position="relative", max_distance=64))
    alibi = MusicTransformer(ModelConfig(position="alibi", max_distance=64))
    distance = torch.arange(80)[None, :]
    learned, fixed = model.position_bias(distance), alibi.position_bias(distance)
    torch.testing.assert_close(learned, fixed)
    assert (learned[:, 0, 1:65].diff(dim=-1) < 0).all()  # strictly decreasing up to the clamp
    assert model.position_bias.table.weight.requires_grad


def test_memory_steering_parameters_learn_fast_without_decay():
    """The position table and the kNN memory bias and temperature: their own group, no weight
    decay, a learning rate scaled up (Adam moves each by about lr per step); every parameter
    once."""
    model = tiny(memory="xl_knn")
    decay, plain, steering = model.optimizer_groups(weight_decay=0.1, memory_lr_scale=10.0)
    knn = knn_attention_of(model)
    want = {id(model.position_bias.table.weight), id(knn.memory_bias), id(knn.log_temperature)}
    assert {id(p) for p in steering["params"]} == want
    assert steering["weight_decay"] == 0.0 and steering["lr_scale"] == 10.0
    assert decay["weight_decay"] == 0.1 and "lr_scale" not in decay
    assert plain["weight_decay"] == 0.0 and "lr_scale" not in plain
    everything = [id(p) for g in (decay, plain, steering) for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())
    alibi = tiny(memory="xl_knn", position="alibi")  # no table to steer: the kNN pair only
    steering = alibi.optimizer_groups(weight_decay=0.1, memory_lr_scale=10.0)[2]
    knn = knn_attention_of(alibi)
    assert {id(p) for p in steering["params"]} == {id(knn.memory_bias), id(knn.log_temperature)}


# ---- 7. memories the model composes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("memory", "kinds", "knn_layers"),
    [
        ("none", [], []),
        ("xl", [XLRecurrence], []),
        ("xl_knn", [XLRecurrence, KNNRetrieval], [3]),
    ],
)
def test_each_memory_kind_is_a_module_the_model_composes(memory, kinds, knn_layers):
    """model.memory names the memory modules; the kNN one gives its layer (knn_layer -1 of 4
    layers: the last) the kNN attention, and only that layer."""
    model = tiny(memory=memory, n_layer=4, knn_layer=-1)
    assert [type(m) for m in model.memories] == kinds
    assert model.keeps_memory == bool(kinds)
    found = [i for i, b in enumerate(model.blocks) if isinstance(b.attn, KNNAttention)]
    assert found == knn_layers
    state = model.initial_state(2, "cpu")
    assert ("knn" in state.slots) == bool(knn_layers) and state.past is None


# ---- 8. what generation does to a state: pick rows, save, restore --------------------------------


@pytest.mark.parametrize("memory", ["none", "xl", "xl_knn"])
@pytest.mark.parametrize("previous_tokens", [0, 2])
def test_selected_rows_go_on_as_they_would_in_the_whole_batch(memory, previous_tokens):
    """Generation drops and reorders rows (beams, finished samples): the rows picked out of a
    state continue exactly as those rows of the whole batch do."""
    model = tiny(memory=memory, previous_tokens=previous_tokens)
    tokens, bar_pos = stream(3, 3 * T, seed=21)
    doc = torch.zeros_like(tokens)
    doc[1, T + 2 :] = 1
    first, last = slice(0, 2 * T), slice(2 * T, 3 * T)
    rows = torch.tensor([2, 0, 1])[:2]
    with torch.no_grad():
        _, state = run(model, tokens[:, first], bar_pos[:, first], doc[:, first])
        if memory == "none":  # generation's key/value cache lives in `xl` for every model
            _, trace = model.read(tokens[:, first], bar_pos[:, first], doc[:, first])
            state = trace.cached(2 * T)
        chosen = state.select(rows)
        assert chosen.batch == 2 and chosen.offset == state.offset
        whole, _, _ = model(tokens[:, last], bar_pos[:, last], doc[:, last], state)
        picked, _, _ = model(tokens[rows, last], bar_pos[rows, last], doc[rows, last], chosen)
    torch.testing.assert_close(picked, whole[rows])


@pytest.mark.parametrize("memory", ["none", "xl", "xl_knn"])
def test_one_row_state_survives_its_state_dict(memory):
    """A single-row state (one generated sample), each memory kind, back from plain tensors."""
    model = tiny(memory=memory)
    tokens, bar_pos = stream(1, 2 * T, seed=22)
    doc = torch.zeros_like(tokens)
    with torch.no_grad():
        _, state = run(model, tokens[:, :T], bar_pos[:, :T], doc[:, :T])
        restored = model.memory_state_from(state.state_dict())
        want, _, _ = model(tokens[:, T:], bar_pos[:, T:], doc[:, T:], state)
        got, _, _ = model(tokens[:, T:], bar_pos[:, T:], doc[:, T:], restored)
    torch.testing.assert_close(got, want)
    assert (restored.past is None) == (state.past is None)
    assert restored.slots.keys() == state.slots.keys()


def test_a_knn_checkpoint_with_missing_values_is_refused():
    memory = KNNMemory(batch=2, n_head=1, head_dim=4, max_memories=10)
    saved = memory.state_dict()
    saved["values"] = saved["values"][:1]
    with pytest.raises(ValueError):
        KNNMemory.from_state_dict(saved, max_memories=10)


def test_rows_with_nothing_stored_retrieve_nothing_and_the_rest_still_retrieve():
    """An empty row first, a filled one after it: the empty one gets -1 ids and nothing found,
    the filled one what brute force finds."""
    torch.manual_seed(1)
    memory = KNNMemory(batch=3, n_head=2, head_dim=8, max_memories=100)
    stored = torch.randn(2, 20, 8)
    memory.doc[:] = 4
    memory.add(1, stored, -stored)
    queries = torch.randn(3, 2, 5, 8)
    keys, values, found = memory.search(queries, torch.full((3, 5), 4), k=3)
    assert not found[0].any() and not found[2].any() and found[1].all()
    _, ids = retrieve_bruteforce(queries[1], stored, 3)
    torch.testing.assert_close(keys[1], stored[torch.arange(2)[:, None, None], ids])
    torch.testing.assert_close(values[1], -keys[1])
    with pytest.raises(ValueError) as error:  # one row asked of three (and two heads)
        memory.search(queries[:1], torch.full((1, 5), 4), k=3)
    assert str(error.value) == "kNN memory holds 3 rows, got a batch of 1"


def test_knn_write_follows_the_song_of_each_rows_last_token():
    """A song starting at the last token: the row keeps that one key; a padding row before a
    real one does not stop the real one being written."""
    memory = KNNMemory(batch=2, n_head=1, head_dim=4, max_memories=100)
    keys = torch.arange(32.0).reshape(2, 1, 4, 4)
    memory.write(keys, keys, torch.tensor([[-1, -1, -1, -1], [3, 3, 3, 5]]))
    assert memory.size(0) == 0 and memory.size(1) == 1
    torch.testing.assert_close(memory.stored(1)[0], keys[1, :, 3:])
    assert memory.doc.tolist() == [-1, 5]


def test_model_runs_in_bfloat16_with_every_memory():
    """Reduced precision (GPU autocast, bf16 weights): memories hand back the query's dtype."""
    model = tiny(memory="xl_knn").to(torch.bfloat16)
    reference = tiny(memory="xl_knn")
    tokens, bar_pos = stream(2, 2 * T, seed=23)
    doc = torch.zeros_like(tokens)
    with torch.no_grad():
        low, state = run(model, tokens, bar_pos, doc)
        high, _ = run(reference, tokens, bar_pos, doc)
    assert low.dtype == torch.bfloat16 and state.slots["knn"].size(0) == 2 * T
    torch.testing.assert_close(low.float(), high, atol=0.1, rtol=0.05)


def test_alibi_slopes_are_not_saved_with_the_weights():
    """They are a function of the head count: checkpoints hold learned weights only."""
    assert not any("slopes" in name for name in tiny(position="alibi").state_dict())


def test_room_for_the_cache_keeps_the_memory_and_is_made_once():
    """with_room: the same keys and values in bigger buffers; asking again for no more room
    gives the same memory, more room new buffers; picking rows keeps the buffered layout."""
    model = tiny(memory="xl")
    tokens, bar_pos = stream(3, T, seed=24)
    with torch.no_grad():
        _, _, state = model(tokens, bar_pos, torch.zeros_like(tokens))
    xl = state.past
    roomy = xl.with_room(3 * T)
    assert roomy.buffers[0][0].shape[2] == roomy.buffers[1][1].shape[2] == 3 * T
    for got, want in zip(roomy.keys + roomy.values, xl.keys + xl.values, strict=True):
        torch.testing.assert_close(got, want)
    assert roomy.with_room(3 * T) is roomy and roomy.with_room(T) is roomy
    bigger = roomy.with_room(4 * T)
    assert bigger is not roomy and bigger.buffers[0][0].shape[2] == 4 * T
    torch.testing.assert_close(bigger.keys[1], xl.keys[1])
    rows = torch.tensor([2, 0])
    picked, plain = roomy.select(rows), xl.select(rows)
    assert picked.buffers is not None and picked.buffers[1][0].shape[::2] == (2, 3 * T)
    for side in (0, 1):
        for got, buffer in zip(picked.buffers[side], roomy.buffers[side], strict=True):
            torch.testing.assert_close(got[:, :, :T], buffer[rows, :, :T])
    for got, want in zip(picked.keys + picked.values, plain.keys + plain.values, strict=True):
        torch.testing.assert_close(got, want)
    assert torch.equal(picked.doc, xl.doc[rows]) and torch.equal(picked.pos, xl.pos)


def test_alibi_slopes_by_hand():
    """Press et al.: head h of n gets 2 ** (-8 (h + 1) / n)."""
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2**-2, 2**-4, 2**-6, 2**-8]))
    torch.testing.assert_close(alibi_slopes(2), torch.tensor([2**-4, 2**-8]))


def test_weights_start_as_gpt2_does():
    """N(0, 0.02) for weights and embeddings; the projections into the residual stream scaled
    by 1 / sqrt(2 n_layer); no bias on the head (checked on a model big enough for the
    sample standard deviation to be within a few percent)."""
    config = ModelConfig(vocab_size=512, n_layer=8, n_head=4, d_model=256, d_ff=1024)
    model = MusicTransformer(config)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.up.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for projection in (model.blocks[0].mlp.down, model.blocks[0].attn.proj):
        assert projection.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.head.bias is None


def test_stored_gives_what_was_added_not_the_room_after_it():
    memory = KNNMemory(batch=1, n_head=1, head_dim=2, max_memories=100)
    memory.doc[0] = 0
    keys = torch.arange(10.0).reshape(1, 5, 2)
    memory.add(0, keys[:, :3], keys[:, :3])
    memory.add(0, keys[:, 3:], keys[:, 3:])  # grows the buffer past 5
    torch.testing.assert_close(memory.stored(0)[0], keys)


def test_a_training_state_without_a_cache_picks_rows_too():
    """Vanilla in training has no XL memory at all: picking rows keeps the rest."""
    model = tiny(memory="none", previous_tokens=2)
    tokens, bar_pos = stream(3, T, seed=25)
    with torch.no_grad():
        _, _, state = model(tokens, bar_pos, torch.zeros_like(tokens))
    assert state.past is None and not state.slots
    picked = state.select(torch.tensor([2, 0]))
    assert picked.past is None and picked.batch == 2
    assert torch.equal(picked.last_tokens, state.last_tokens[[2, 0]])
