"""The Performance-RNN post's baseline (seed 004, MusicRNN): an LSTM on the same token stream.

It reads the stream the transformers read, segment by segment, with the same inputs (token and
bar-position embeddings) and the same call: (tokens, bar positions, song ids, state) -> logits,
loss, state. Its state is the LSTM's (h, c), carried from one segment to the next of the same
row (detached: gradients stop at the segment, as they stop at the transformers' memories) and
reset to zeros where a new song starts, inside a segment too. `sized_to` picks the hidden size
whose parameter count is nearest a transformer's, so the comparison is at equal size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from midigen.models.transformer import embed_rows, row_logits, token_loss
from midigen.registry import LSTM


@dataclass(frozen=True)
class LSTMConfig:
    vocab_size: int
    extra_fields: tuple[int, ...] = ()  # rows of fields (codebook), as ModelConfig's
    d_hidden: int = 256
    n_layer: int = 2
    d_embed: int = 128
    bar_pos_size: int = 96
    dropout: float = 0.1
    segment_len: int = 256  # tokens per segment of the stream (the transformers')
    steps_per_beat: int = 4  # of the bar positions it reads
    memory: str = LSTM  # what it carries across segments: its (h, c)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_fields", tuple(self.extra_fields))  # JSON gives a list


@dataclass
class LSTMState:
    """Each row's (h, c) after its last token, and the song that token belonged to."""

    h: Tensor  # (n_layer, B, d_hidden)
    c: Tensor  # (n_layer, B, d_hidden)
    last_doc: Tensor  # (B,) song id of each row's previous token, -1 before any

    @property
    def batch(self) -> int:
        return self.last_doc.shape[0]

    def select(self, rows: Tensor) -> LSTMState:
        return LSTMState(self.h[:, rows], self.c[:, rows], self.last_doc[rows])

    @classmethod
    def stack(cls, states: list[LSTMState]) -> LSTMState:
        """One state of the rows of all `states` (a recurrence has no positions to align)."""
        return cls(
            torch.cat([s.h for s in states], 1),
            torch.cat([s.c for s in states], 1),
            torch.cat([s.last_doc for s in states]),
        )

    def state_dict(self) -> dict:
        return {"h": self.h.cpu(), "c": self.c.cpu(), "last_doc": self.last_doc.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> LSTMState:
        return cls(*(state[k].to(device) for k in ("h", "c", "last_doc")))


class MusicLSTM(nn.Module):
    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_embed)
        self.field_emb = nn.ModuleList(nn.Embedding(n, config.d_embed) for n in config.extra_fields)
        self.bar_emb = nn.Embedding(config.bar_pos_size, config.d_embed)
        self.lstm = nn.LSTM(
            config.d_embed,
            config.d_hidden,
            config.n_layer,
            batch_first=True,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.d_hidden, config.vocab_size)
        self.field_heads = nn.ModuleList(nn.Linear(config.d_hidden, n) for n in config.extra_fields)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optimizer_groups(self, weight_decay: float, memory_lr_scale: float) -> list[dict]:
        """AdamW groups as the transformer's: matrices decay, vectors do not (it has no memory
        steering parameters, so `memory_lr_scale` has nothing to scale)."""
        params = list(self.parameters())
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    def memory_state_from(self, state: dict) -> LSTMState:
        """The state a checkpoint saved, on this model's device."""
        return LSTMState.from_state_dict(state, self.tok_emb.weight.device)

    def initial_state(self, batch: int, device: torch.device | str) -> LSTMState:
        zeros = torch.zeros(self.config.n_layer, batch, self.config.d_hidden, device=device)
        return LSTMState(zeros, zeros.clone(), torch.full((batch,), -1, device=device))

    def forward(
        self,
        tokens: Tensor,
        bar_pos: Tensor,
        doc: Tensor | None = None,
        state: LSTMState | None = None,
        targets: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, LSTMState]:
        """One segment of every row: (B, T) -> logits (B, T, V), the mean cross entropy over
        targets that are not IGNORE (None without targets), and the state for the next."""
        batch, length = tokens.shape[:2]
        doc = torch.zeros_like(bar_pos) if doc is None else doc
        if state is None:
            state = self.initial_state(batch, tokens.device)
        x = embed_rows(self.tok_emb, self.field_emb, tokens)
        x = x + self.bar_emb(bar_pos.clamp(0, self.config.bar_pos_size - 1))
        x = self.drop(x)
        previous = torch.cat([state.last_doc[:, None], doc[:, :-1]], dim=1)
        new_song = doc != previous  # (B, T): this token opens a song in its row
        cuts = sorted({0, length, *torch.nonzero(new_song.any(0)).flatten().tolist()})
        h, c, outputs = state.h, state.c, []
        for start, end in zip(cuts[:-1], cuts[1:], strict=True):
            keep = (~new_song[:, start]).to(h.dtype)[None, :, None]  # zeros where a song opens
            out, (h, c) = self.lstm(x[:, start:end], (h * keep, c * keep))
            outputs.append(out)
        logits = row_logits(self.head, self.field_heads, self.drop(torch.cat(outputs, dim=1)))
        loss = None
        if targets is not None:  # the transformer's loss, so the two compare like for like
            total, count = token_loss(logits, targets)
            loss = total / count.clamp(min=1)
        after = LSTMState(h.detach(), c.detach(), doc[:, -1].clone())
        return logits, loss, after


def lstm_params(config: LSTMConfig) -> int:
    """Parameters of a MusicLSTM, without building it."""
    e, h, n = config.d_embed, config.d_hidden, config.n_layer
    v = config.vocab_size + sum(config.extra_fields)  # every field's embedding and head
    recurrent = 4 * h * (e + h + 2) + (n - 1) * 4 * h * (h + h + 2)
    return v * e + config.bar_pos_size * e + recurrent + h * v + v


def sized_to(params: int, config: LSTMConfig) -> LSTMConfig:
    """`config` with the hidden size whose parameter count is nearest `params`."""
    sizes = (replace(config, d_hidden=h) for h in range(8, 4097, 8))
    return min(sizes, key=lambda c: abs(lstm_params(c) - params))
