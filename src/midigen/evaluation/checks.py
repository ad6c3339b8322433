"""The field's checks of generated music, beyond likelihood: does a continuation copy its
training set, does it loop, does it end?

- Copying (Aria's authors warn that their model reproduces famous pieces; a memory makes
  copying easier): the longest token span a continuation shares with any training song, and
  the share of its 8-bar windows found verbatim in the training split. A suffix array of the
  training tokens answers "the longest match starting here" for every position of a
  continuation in O(log n) comparisons each.
- Looping (Museformer's bar self-similarity): the similarity of two bars is the Jaccard index
  of their (position in bar, pitch) onsets; the mean at each bar distance, and whether one
  bar is played 4 or more times in a row.
- Ending: whether the continuation reaches <eos> within the length limit; the real
  continuation cut at the same limit is the reference.

Each is a number per continuation; evaluate gives it for the real continuations too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from midigen.data.corpus import Shard
from midigen.encodings import Scheme, row_ids
from midigen.midi.files import Notes

WINDOW_BARS = 8  # the span of a copied "phrase"
DISTANCES = (1, 2, 4, 8)  # bars between the two bars compared
LOOP_REPEATS = 4  # one bar this many times in a row is a loop
CHECKS = (
    "copied_span",
    "copied_windows",
    *(f"bar_similarity_{d}" for d in DISTANCES),
    "loops",
    "ends",
)


class TrainingIndex:
    """A suffix array over the training songs' tokens (one int per row), each song closed by a
    separator no token equals, so that no match runs from one song into the next."""

    def __init__(self, songs: Sequence[np.ndarray]):
        parts = []
        for i, song in enumerate(songs):
            parts += [np.asarray(song, np.int64), np.array([-1 - i])]  # separators are < 0
        self.text = np.concatenate(parts) if parts else np.array([-1], np.int64)
        self.suffixes = suffix_array(self.text)

    @classmethod
    def of(cls, shard: Shard, fields: tuple[int, ...]) -> TrainingIndex:
        return cls(shard.song_rows(fields))

    def longest_matches(self, query: np.ndarray) -> np.ndarray:
        """(len(query),): for each start i, the length of the longest query[i:i+L] that occurs
        in the training text."""
        query = np.asarray(query, np.int64)
        return np.array([self._longest(query[i:]) for i in range(len(query))], dtype=np.int64)

    def _longest(self, query: np.ndarray) -> int:
        """The longest prefix of `query` in the text: it is shared with one of the two
        suffixes the query sorts between."""
        low, high = 0, len(self.suffixes)
        while low < high:  # the first suffix not below the query
            mid = (low + high) // 2
            if self._below(self.suffixes[mid], query):
                low = mid + 1
            else:
                high = mid
        neighbours = [j for j in (low - 1, low) if 0 <= j < len(self.suffixes)]
        return max((self._common(self.suffixes[j], query) for j in neighbours), default=0)

    def _common(self, start: int, query: np.ndarray) -> int:
        """The length of the common prefix of the suffix at `start` and `query`."""
        suffix = self.text[start : start + len(query)]
        differ = np.flatnonzero(suffix != query[: len(suffix)])
        return int(differ[0]) if len(differ) else len(suffix)

    def _below(self, start: int, query: np.ndarray) -> bool:
        """Whether the suffix at `start` sorts before `query` (a proper prefix sorts first)."""
        common = self._common(start, query)
        if common == len(query):
            return False
        if start + common == len(self.text):
            return True
        return bool(self.text[start + common] < query[common])


def suffix_array(text: np.ndarray) -> np.ndarray:
    """The starts of `text`'s suffixes in sorted order, by prefix doubling: each round sorts by
    the ranks of the first 2k tokens, read as (rank of the first k, rank of the next k)."""
    n = len(text)
    rank = np.unique(text, return_inverse=True)[1].astype(np.int64)
    k = 1
    while True:
        second = np.full(n, -1, dtype=np.int64)  # past the end sorts first
        second[: max(n - k, 0)] = rank[k:]
        order = np.lexsort((second, rank))
        new_group = (np.diff(rank[order]) != 0) | (np.diff(second[order]) != 0)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.concatenate([[0], np.cumsum(new_group)])
        if rank[order[-1]] == n - 1:  # all suffixes told apart (they always are once k >= n)
            return order
        k *= 2


# ---- per continuation ------------------------------------------------------------------------


def copying(index: TrainingIndex, tokens: np.ndarray, bar_starts: np.ndarray) -> dict[str, float]:
    """The longest span of `tokens` (one int per row) found in the training songs, and the share
    of its 8-bar windows found there whole (`bar_starts`: the index of each bar's first token,
    and the end; NaN when the continuation is shorter than a window)."""
    longest = index.longest_matches(tokens)
    starts, ends = bar_starts[:-WINDOW_BARS], bar_starts[WINDOW_BARS:]
    windows = [longest[s] >= e - s for s, e in zip(starts, ends, strict=True) if e > s]
    return {
        "copied_span": float(longest.max(initial=0)),
        "copied_windows": float(np.mean(windows)) if windows else float("nan"),
    }


def bar_starts(steps: np.ndarray, start: int, bar_steps: int) -> np.ndarray:
    """The index of the first token of each whole bar from step `start` on, and len(steps)
    closing the last: a bar without a token starts where the next token is."""
    bars = (np.asarray(steps, np.int64) - start) // bar_steps
    count = int(bars.max(initial=-1)) + 1
    return np.searchsorted(bars, np.arange(count + 1), side="left")


def bar_sets(notes: Notes, start: int, bar_steps: int) -> list[set[tuple[int, int]]]:
    """Per bar from step `start` to the last onset, its (position in bar, pitch) onsets."""
    bars = (notes.onset - start) // bar_steps
    sets: list[set[tuple[int, int]]] = [set() for _ in range(int(bars.max(initial=-1)) + 1)]
    for bar, onset, pitch in zip(
        *(a.tolist() for a in (bars, notes.onset, notes.pitch)), strict=True
    ):
        if bar >= 0:
            sets[bar].add(((onset - start) % bar_steps, pitch))
    return sets


def looping(notes: Notes, start: int, bar_steps: int) -> dict[str, float]:
    """Mean Jaccard similarity of the bars DISTANCES apart (over pairs with a note in either;
    NaN without such a pair), and 1.0 if one bar with notes is played LOOP_REPEATS times in a
    row (else 0.0)."""
    bars = bar_sets(notes, start, bar_steps)
    result = {}
    for d in DISTANCES:
        pairs = [(a, b) for a, b in zip(bars, bars[d:], strict=False) if a or b]
        result[f"bar_similarity_{d}"] = (
            float(np.mean([len(a & b) / len(a | b) for a, b in pairs])) if pairs else float("nan")
        )
    run, longest = 1, 1 if any(bars) else 0
    for before, bar in zip(bars, bars[1:], strict=False):
        run = run + 1 if bar and bar == before else 1
        longest = max(longest, run)
    result["loops"] = float(longest >= LOOP_REPEATS)
    return result


def ends(scheme: Scheme, prompt: list, continuation: list, length: int) -> float:
    """1.0 if the song ends (<eos>) within the first `length` tokens of `continuation`."""
    return float(scheme.grammar.parse([*prompt, *continuation[:length]]).ended)


def token_steps(scheme: Scheme, prompt: list, continuation: list) -> np.ndarray:
    """The step each token of `continuation` sounds at, read with the scheme's grammar."""
    grammar = scheme.grammar
    cursor, steps = grammar.parse(list(prompt)), []
    for token in continuation:
        steps.append(grammar.sounds_at(cursor, token))
        cursor = grammar.advance(cursor, token)
    return np.array(steps, dtype=np.int64)


def check_continuation(
    scheme: Scheme,
    index: TrainingIndex,
    prompt: list,
    continuation: list,
    notes: Notes,
    start: int,
    bar_steps: int,
) -> dict[str, float]:
    """Copying and looping of one continuation (its tokens after `prompt`, and its notes from
    step `start`, where it begins)."""
    steps = token_steps(scheme, prompt, continuation)
    ids = row_ids(np.asarray(continuation, np.int64), scheme.fields)
    return {
        **copying(index, ids, bar_starts(steps, start, bar_steps)),
        **looping(notes, start, bar_steps),
    }
