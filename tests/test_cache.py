"""The copy cache (evaluation/cache.py), on hand-made songs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from midigen.data.corpus import Shard
from midigen.evaluation.cache import copy_hits, fit_cache, mixed_nll
from midigen.evaluation.likelihood import TokenScores


def shard_of(*songs: list) -> Shard:
    tokens = np.concatenate([np.asarray(song) for song in songs])
    offsets = np.cumsum([0, *(len(song) for song in songs)])
    zeros = np.zeros(len(tokens), dtype=np.int64)
    return Shard(tokens, zeros, zeros, offsets, [{"sha256": str(i)} for i in range(len(songs))])


def every_target(shard: Shard, nll: float = 2.0) -> TokenScores:
    """A score per target of every song (predicted from positions 0 .. len - 2), in song order."""
    song = np.concatenate(
        [
            [i] * (len(range(shard.song(i).start, shard.song(i).stop)) - 1)
            for i in range(len(shard.offsets) - 1)
        ]
    )
    position = np.concatenate([np.arange(n - 1) for n in np.diff(shard.offsets)])
    target = np.asarray(shard.tokens)[shard.offsets[song] + position + 1]
    return TokenScores(np.full(len(song), nll), target, position, song)


def copies_by_hand(song: list, order: int) -> tuple[list, list]:
    """For each p: does the context ending at p occur earlier, and does what followed its
    latest earlier occurrence equal song[p + 1]? Searched the slow way."""
    matched, hit = [], []
    for p in range(len(song) - 1):
        context = song[p - order + 1 : p + 1] if p >= order - 1 else None
        earlier = [
            q for q in range(order - 1, p) if context and song[q - order + 1 : q + 1] == context
        ]
        matched.append(bool(earlier))
        hit.append(bool(earlier) and song[earlier[-1] + 1] == song[p + 1])
    return matched, hit


SONG = [9, 1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3, 5, 7]


def test_the_cache_copies_what_followed_the_latest_occurrence():
    shard = shard_of(SONG, [1, 2, 3, 4])  # nothing crosses into the second song
    matched, hit = copy_hits(every_target(shard), shard, order=3)
    # p = 7: (1, 2, 3) last seen ending at 3, followed by 4; the target is 5: a miss
    # p = 11: (1, 2, 3) last seen ending at 7, followed by 5; the target is 5: a hit
    assert matched[7] and not hit[7] and matched[11] and hit[11]
    assert [p for p in range(13) if matched[p]] == [7, 11, 12]  # 12: (2, 3, 5) as at 8
    for order in (1, 2, 3, 4):
        by_hand = copies_by_hand(SONG, order)
        got = copy_hits(every_target(shard), shard, order)
        assert [list(x[:13]) for x in got] == [list(x) for x in by_hand], order
        assert not got[0][13:].any()  # the second song starts with nothing to copy


def test_mixing_by_hand():
    nll = np.full(3, -math.log(0.5))
    mixed = mixed_nll(nll, np.array([True, True, False]), np.array([True, False, False]), 0.5)
    assert mixed == pytest.approx([-math.log(0.75), -math.log(0.25), -math.log(0.5)])
    assert mixed_nll(nll, np.array([True]), np.array([False]), 1.0)[0] == math.inf


def test_the_fit_weighs_the_cache_by_how_often_it_is_right():
    """Validation where every copy is right: the heaviest weight; where every copy is wrong:
    the lightest. Either way the fit's NLL is that of the order and weight it chose."""
    loop = [1, 2, 3, 4] * 10
    right = shard_of(loop)
    cache, nll = fit_cache(every_target(right, nll=math.log(50)), right)
    assert cache.weight == 0.95
    assert nll == pytest.approx(cache.apply(every_target(right, math.log(50)), right).nll.mean())
    wrong = shard_of([1, 1, 2, 1, 3, 1, 4, 1, 5, 1, 6])  # after 1 comes something new each time
    cache, _ = fit_cache(every_target(wrong, nll=math.log(50)), wrong)
    assert cache.weight == 0.05
