"""Attention arithmetic the modules in transformer.py call: a CPU kernel for attention with a
learned bias, and the two halves of one softmax over local keys and kNN hits."""

from __future__ import annotations

import math

import torch
from einops import einsum, rearrange
from torch import Tensor

MASKED = -1e9  # additive mask of a hidden key: exp() of it is exactly 0, and a finite value
# makes scaled_dot_product_attention's CPU softmax ~20% faster than -inf does


class BiasedAttention(torch.autograd.Function):
    """softmax(q kᵀ / √d + mask) v, where the mask holds a bias that learns, on the CPU.

    scaled_dot_product_attention computes the same, but a mask that needs a gradient sends it
    to its unfused math path on the CPU, which also scans every row for being fully masked,
    computes gradients for the XL memory's keys and values (detached: they are dropped) and
    hands a (B, H, T, S) gradient per layer back to the mask. This does the same arithmetic in
    fewer passes over the scores, and its gradients go only to the queries, the segment's own
    keys/values and the (H, T, S) bias. Speed: bench/train.py; equality with SDPA: test_model.
    """

    @staticmethod
    def forward(ctx, q, k, v, keys, values, mask, bias):
        """q, k, v: this segment's (B, H, T, Dh); keys, values: (B, H, S, Dh), detached, the
        memory's then k and v again; mask: (B|1, H, T, S) detached, added to the scores, and
        `bias` the part of it that receives the gradient (it broadcasts to the mask)."""
        q = q / math.sqrt(q.shape[-1])
        probs = torch.matmul(q, keys.transpose(-1, -2)).add_(mask).softmax(dim=-1)
        out = probs @ values
        ctx.save_for_backward(q, keys, values, probs, out)
        ctx.own, ctx.bias_shape = k.shape[2], bias.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, keys, values, probs, out = ctx.saved_tensors
        own = slice(keys.shape[2] - ctx.own, None)  # the segment's own keys: the last T
        # softmax backward: dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dO * O)
        grad_scores = (grad_out @ values.transpose(-1, -2)).sub_((grad_out * out).sum(-1, True))
        grad_scores.mul_(probs)
        grad_q = (grad_scores @ keys) / math.sqrt(q.shape[-1])
        grad_k = grad_scores[..., own].transpose(-1, -2) @ q
        grad_v = probs[..., own].transpose(-1, -2) @ grad_out
        grad_bias = grad_scores.sum_to_size(ctx.bias_shape)
        return grad_q, grad_k, grad_v, None, None, None, grad_bias


def local_logsumexp(q: Tensor, keys: Tensor, mask: Tensor | None) -> Tensor:
    """log Σ exp(score) over the keys a query (B, H, T, Dh) may see (B, H, T): the local side
    of a softmax that the memory's hits join. `mask` None means plain causal attention."""
    scores = q @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is None:
        length = q.shape[2]
        mask = torch.full((length, length), MASKED, dtype=q.dtype, device=q.device).triu(1)
    return (scores + mask).logsumexp(-1)


def knn_attention(
    q: Tensor, keys: Tensor, values: Tensor, found: Tensor, memory_bias: Tensor
) -> tuple[Tensor, Tensor]:
    """Softmax attention of each query (B, H, T, Dh) over its own k hits (B, H, T, k, Dh),
    scored like local attention (q·k/√d) plus the head's memory bias; hits that are not
    `found` get no weight. Returns the output (B, H, T, Dh) and the scores' log Σ exp."""
    scores = einsum(q, keys, "b h t d, b h t k d -> b h t k") / math.sqrt(q.shape[-1])
    scores = scores + rearrange(memory_bias, "h -> h 1 1").to(q.dtype)
    scores = scores.masked_fill(~found, MASKED)
    out = einsum(scores.softmax(-1), values, "b h t k, b h t k d -> b h t d")
    return out, scores.logsumexp(-1)
