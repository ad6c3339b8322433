"""The reference a sceptic brings against a memory: the model plus a copy cache.

The cache is untrained: where the n tokens before a target occurred earlier in the song, it
predicts the token that followed their latest occurrence, and the prediction is mixed into
the model's with weight w, p = (1 - w) p_model + w [target = copy]; elsewhere the model
predicts alone (Grave et al.'s continuous cache, with exact n-gram matches for keys). Its
order n and weight w are fit on the validation split only. "Memory helped" then means: better
than vanilla, and better than vanilla plus this cache on the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from midigen.data.corpus import Shard
from midigen.evaluation.likelihood import Scored, TokenScores, repeat_distance, repeated

ORDERS = (2, 4, 8, 16)  # context lengths the fit tries
WEIGHTS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95


@dataclass(frozen=True)
class CopyCache:
    order: int
    weight: float

    def apply(self, scores: TokenScores, shard: Shard) -> TokenScores:
        """`scores` of `shard` with each NLL that of the model mixed with the cache."""
        matched, hit = copy_hits(scores, shard, self.order)
        return replace(scores, nll=mixed_nll(scores.nll, matched, hit, self.weight))

    def applied(self, scored: Scored) -> Scored:
        """A split's scores and repeat probe, each with the cache mixed in."""
        probe = self.apply(scored.probe, repeated(scored.shard))
        return replace(scored, scores=self.apply(scored.scores, scored.shard), probe=probe)


def copy_hits(scores: TokenScores, shard: Shard, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Per scored token: whether the cache has a prediction (the `order` tokens ending where the
    prediction is made from occurred earlier in the song) and whether that prediction is the
    target."""
    matched, hit = [], []
    for i in range(len(shard.offsets) - 1):
        tokens = np.asarray(shard.tokens[shard.song(i)])
        distance = repeat_distance(tokens, order)  # at p: back to the latest equal context
        source = np.arange(len(tokens)) - distance + 1  # what followed that occurrence
        nxt = np.roll(tokens, -1, axis=0)  # the target predicted from p (wraps at the end)
        same = nxt == tokens[np.minimum(source, len(tokens) - 1)]
        matched.append(distance > 0)
        hit.append((distance > 0) & (same.all(-1) if same.ndim == 2 else same))
    where = shard.offsets[scores.song] + scores.position
    return np.concatenate(matched)[where], np.concatenate(hit)[where]


def mixed_nll(nll: np.ndarray, matched: np.ndarray, hit: np.ndarray, weight: float) -> np.ndarray:
    """-log((1 - w) p_model + w [hit]) where the cache predicts, the model's NLL elsewhere."""
    with np.errstate(divide="ignore"):
        mixed = -np.log((1 - weight) * np.exp(-nll) + weight * hit)
    return np.where(matched, mixed, nll)


def fit_cache(scores: TokenScores, shard: Shard) -> tuple[CopyCache, float]:
    """The order and weight with the lowest mean NLL on `scores` of `shard` (the validation
    split), and that NLL."""
    best = None
    for order in ORDERS:
        matched, hit = copy_hits(scores, shard, order)
        for weight in WEIGHTS:
            nll = float(mixed_nll(scores.nll, matched, hit, weight).mean())
            if best is None or nll < best[1]:
                best = CopyCache(order, weight), nll
    return best
