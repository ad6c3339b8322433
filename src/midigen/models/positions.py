"""Where a key sits relative to its query, as an additive bias on attention scores by distance:
a learned table per head (T5-style, the default) or ALiBi's fixed slopes."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def alibi_slopes(n_head: int) -> Tensor:
    """ALiBi's per-head slopes (Press et al.): geometric, from 2^-8/H down to 2^-8."""
    return torch.tensor([2 ** (-8 * (h + 1) / n_head) for h in range(n_head)])


class RelativeBias(nn.Module):
    """A learned bias per head and distance (query position - key position), T5-style.

    Distances clamp to max_distance, so everything farther shares the last entry. One table
    serves all layers and both the segment and the XL memory, so a key means the same whether
    it sits in memory or in the current segment. The table starts as ALiBi's linear penalty:
    Adam moves each entry by about the learning rate per step, so a table starting flat needs
    thousands of steps to learn locality, and until then every extra key (the XL memory above
    all) only dilutes attention (`test_relative_bias_starts_local` checks the start).
    """

    def __init__(self, n_head: int, max_distance: int):
        super().__init__()
        self.max_distance = max_distance
        self.table = nn.Embedding(max_distance + 1, n_head)  # embedding: a fast backward

    def reset_parameters(self) -> None:
        distance = torch.arange(self.max_distance + 1, dtype=torch.float32)
        with torch.no_grad():
            self.table.weight.copy_(-distance[:, None] * alibi_slopes(self.table.weight.shape[1]))

    def forward(self, distance: Tensor) -> Tensor:
        """(T, S) distances -> (H, T, S) bias."""
        return self.table(distance.clamp(0, self.max_distance)).permute(2, 0, 1)


class ALiBi(nn.Module):
    """A fixed linear penalty per head (Press et al.), distances clamped to max_distance."""

    def __init__(self, n_head: int, max_distance: int):
        super().__init__()
        self.max_distance = max_distance
        self.register_buffer("slopes", alibi_slopes(n_head), persistent=False)

    def forward(self, distance: Tensor) -> Tensor:
        distance = distance.clamp(0, self.max_distance).to(self.slopes.dtype)
        return -self.slopes[:, None, None] * distance
