"""The LSTM baseline: its state carries a song across segments and never crosses songs, and it
is sized to the transformer it is compared with."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from builders import TINY_MODEL

from midigen.models.lstm import LSTMConfig, LSTMState, MusicLSTM, lstm_params, sized_to
from midigen.models.transformer import ModelConfig, MusicTransformer

V, T = 40, 8


def tiny_lstm() -> MusicLSTM:
    torch.manual_seed(0)
    return MusicLSTM(LSTMConfig(vocab_size=V, d_hidden=24, n_layer=2, d_embed=16, dropout=0.0))


def stream(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (batch, length), generator=g), torch.randint(0, 16, (batch, length))


def by_segments(model, tokens, bar_pos, doc, state=None):
    out = []
    for s in range(0, tokens.shape[1], T):
        logits, _, state = model(
            tokens[:, s : s + T], bar_pos[:, s : s + T], doc[:, s : s + T], state
        )
        out.append(logits)
    return torch.cat(out, dim=1), state


def test_state_carries_a_song_across_segments():
    model = tiny_lstm().eval()
    tokens, bar_pos = stream(2, 4 * T)
    doc = torch.zeros_like(tokens)
    with torch.no_grad():
        pieces, _ = by_segments(model, tokens, bar_pos, doc)
        whole, _, _ = model(tokens, bar_pos, doc)
    torch.testing.assert_close(pieces, whole)


@pytest.mark.parametrize("boundary", [T, T + 3])  # at a segment's start, and inside one
def test_a_new_song_starts_from_zero_state(boundary):
    """Row 1 plays song 0 then song 1: song 1's logits are those of song 1 alone."""
    model = tiny_lstm().eval()
    tokens, bar_pos = stream(2, 3 * T, seed=1)
    doc = torch.zeros_like(tokens)
    doc[1, boundary:] = 1
    with torch.no_grad():
        logits, state = by_segments(model, tokens, bar_pos, doc)
        alone, _ = by_segments(
            model, tokens[1:, boundary:], bar_pos[1:, boundary:], doc[1:, boundary:]
        )
        row0, _ = by_segments(model, tokens[:1], bar_pos[:1], doc[:1])
    torch.testing.assert_close(logits[1:, boundary:], alone)
    torch.testing.assert_close(logits[:1], row0)
    assert state.last_doc.tolist() == [0, 1]


def test_gradients_stop_at_the_segment():
    model = tiny_lstm()
    tokens, bar_pos = stream(2, 2 * T, seed=2)
    doc = torch.zeros_like(tokens)
    _, _, state = model(tokens[:, :T], bar_pos[:, :T], doc[:, :T])
    assert not state.h.requires_grad and not state.c.requires_grad
    targets = tokens[:, T:].roll(-1, dims=1)
    _, loss, _ = model(tokens[:, T:], bar_pos[:, T:], doc[:, T:], state, targets)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_state_picks_rows_and_survives_its_state_dict():
    model = tiny_lstm().eval()
    tokens, bar_pos = stream(3, 2 * T, seed=3)
    doc = torch.zeros_like(tokens)
    rows = torch.tensor([2, 0])
    with torch.no_grad():
        _, _, state = model(tokens[:, :T], bar_pos[:, :T], doc[:, :T])
        restored = LSTMState.from_state_dict(state.state_dict()).select(rows)
        want, _, _ = model(tokens[:, T:], bar_pos[:, T:], doc[:, T:], state)
        got, _, _ = model(tokens[rows, T:], bar_pos[rows, T:], doc[rows, T:], restored)
    torch.testing.assert_close(got, want[rows])


def test_sized_to_the_transformer_it_is_compared_with():
    transformer = MusicTransformer(ModelConfig(**{**TINY_MODEL, "vocab_size": V}))
    target = transformer.num_params()
    config = sized_to(target, LSTMConfig(vocab_size=V, d_embed=16, n_layer=2))
    assert lstm_params(config) == MusicLSTM(config).num_params()  # the formula is the module
    assert abs(MusicLSTM(config).num_params() - target) / target < 0.05
    wider = dataclasses.replace(config, d_hidden=config.d_hidden + 8)
    narrower = dataclasses.replace(config, d_hidden=config.d_hidden - 8)
    for other in (wider, narrower):
        assert abs(lstm_params(other) - target) >= abs(lstm_params(config) - target)
