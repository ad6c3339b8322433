"""Baselines a model must beat: a unigram and a smoothed n-gram over the same tokens and targets.

Both are fit on the train split and scored on the test split exactly as the models are: every
token of a song after its `<sos>` is a target, and nothing is predicted across songs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

from midigen.data.corpus import Shard
from midigen.encodings import Scheme
from midigen.evaluation.likelihood import TokenScores, likelihood_metrics

NO_LEFT = -1  # the "token" before a song's first token


class NGramModel:
    """Interpolated Kneser-Ney n-gram model (Chen & Goodman 1998), one discount per order:

        P_k(w | h) = max(c_k(hw) - D_k, 0) / c_k(h) + D_k * T_k(h) / c_k(h) * P_k-1(w | h[1:])
        P_0(w) = 1 / V

    c_k(h) sums c_k(hw) over w, T_k(h) counts the distinct w seen after h, and an unseen h backs
    off to P_k-1 whole. The top order counts n-grams; lower orders count distinct left
    neighbours (continuation counts), each occurrence at a song's start counting once (as KenLM
    does for <s>). D_k = n1 / (n1 + 2 n2) (Ney), 0.5 when no count is 1. Contexts restart at
    every song, so its first tokens use shorter contexts. Order 1 is a unigram discounted
    towards the uniform distribution: no token ever gets probability 0.
    """

    def __init__(self, order: int, vocab_size: int):
        if order < 1:
            raise ValueError(f"n-gram order must be at least 1 (got {order})")
        self.order, self.vocab_size = order, vocab_size
        self.tables: list[dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]]] = []
        self.discounts: list[float] = []

    def fit(self, songs: Iterable[np.ndarray]) -> NGramModel:
        songs = [np.asarray(s, dtype=np.int64) for s in songs]
        self.tables, self.discounts = [], []
        for k in range(1, self.order + 1):
            grams, counts = self._counts(songs, k, continuation=k < self.order)
            self.tables.append(_by_context(grams, counts))
            n1, n2 = np.count_nonzero(counts == 1), np.count_nonzero(counts == 2)
            self.discounts.append(float(n1 / (n1 + 2 * n2)) if n1 else 0.5)
        return self

    @staticmethod
    def _counts(
        songs: list[np.ndarray], k: int, continuation: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distinct k-grams ending on a target (sorted) and their raw or continuation counts."""
        rows = []
        for song in songs:
            if len(song) < max(k, 2):
                continue
            grams = np.lib.stride_tricks.sliding_window_view(song, k)
            left = np.concatenate([[NO_LEFT], song[: len(grams) - 1]])
            if k == 1:  # a unigram's token must be a target: not the song's first token
                grams, left = grams[1:], left[1:]
            rows.append(np.column_stack([left, grams]))
        if not rows:
            return np.zeros((0, k), dtype=np.int64), np.zeros(0, dtype=np.int64)
        rows = np.concatenate(rows)
        if continuation:  # distinct left neighbours; every song-start occurrence counts
            at_start = rows[:, 0] == NO_LEFT
            rows = np.concatenate([rows[at_start], np.unique(rows[~at_start], axis=0)])
        return np.unique(rows[:, 1:], axis=0, return_counts=True)

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """P(w | context) for every token w of the vocabulary (sums to 1)."""
        if not self.tables:
            raise RuntimeError("fit the n-gram model before asking for probabilities")
        context = tuple(int(t) for t in context[max(0, len(context) - self.order + 1) :])
        return self._level(len(context) + 1, context)

    def _level(self, k: int, context: tuple[int, ...]) -> np.ndarray:
        if k == 0:
            return np.full(self.vocab_size, 1 / self.vocab_size)
        lower = self._level(k - 1, context[1:])
        seen = self.tables[k - 1].get(context)
        if seen is None:
            return lower
        tokens, counts = seen
        total, discount = counts.sum(), self.discounts[k - 1]
        p = lower * (discount * len(tokens) / total)
        p[tokens] += np.maximum(counts - discount, 0) / total
        return p

    def song_nll(self, song: np.ndarray) -> np.ndarray:
        """NLL (nats) of every token of a song after its first, each from its own context."""
        song = np.asarray(song, dtype=np.int64)
        return np.array(
            [
                -np.log(self.distribution(song[max(0, i - self.order + 1) : i])[song[i]])
                for i in range(1, len(song))
            ]
        )

    def scores(self, songs: list[np.ndarray]) -> TokenScores:
        """Per-target NLLs of whole songs, laid out as the models' are."""
        nll = [self.song_nll(s) for s in songs]
        return TokenScores(
            nll=np.concatenate(nll),
            target=np.concatenate([s[1:] for s in songs]),
            position=np.concatenate([np.arange(len(s) - 1) for s in songs]),
            song=np.concatenate([np.full(len(s) - 1, i) for i, s in enumerate(songs)]),
        )


def _by_context(
    grams: np.ndarray, counts: np.ndarray
) -> dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]]:
    """Sorted k-grams -> {context: (next tokens, their counts)}."""
    if len(grams) == 0:
        return {}
    contexts = grams[:, :-1]
    change = np.flatnonzero((contexts[1:] != contexts[:-1]).any(axis=1)) + 1
    starts, ends = np.concatenate([[0], change]), np.concatenate([change, [len(grams)]])
    return {
        tuple(contexts[a].tolist()): (grams[a:b, -1], counts[a:b].astype(np.float64))
        for a, b in zip(starts, ends, strict=True)
    }


def evaluate_baselines(
    train: Shard, test: Shard, scheme: Scheme, order: int, buckets: Sequence[int]
) -> dict[str, dict]:
    """The unigram and every n-gram of order 2..`order`, fit on `train`, scored on `test`.

    All orders are reported, so a model is compared with the best of them, not with one
    order that happens to be weak on this corpus.
    """
    fields = scheme.fields
    # rows of several fields: one id per row, so a row's NLL is its joint probability's
    train_songs, test_songs = train.song_rows(fields), test.song_rows(fields)
    results = {}
    for n in range(1, order + 1):
        model = NGramModel(n, math.prod(fields)).fit(train_songs)
        scores = model.scores(test_songs)
        if len(fields) > 1:  # back to rows, which the scheme counts notes in
            rows = np.stack(np.unravel_index(scores.target, fields), axis=-1)
            scores = dataclasses.replace(scores, target=rows)
        metrics = likelihood_metrics(scores, scheme, buckets, test.seconds())
        results["unigram" if n == 1 else f"{n}-gram"] = {"order": n, **metrics}
    return results
