"""A learned vocabulary on top of a flat scheme: byte-pair merges (Hugging Face tokenizers).

Each base token id becomes one character, each song one string, and BPE learns merges on the
training split's songs only. The whole song is one word, so merges cross time steps (a note
with its duration, a chord, a note and the gap after it): the merge the MIDIGen author could
not make with his bar-and-beat layout (seed 003). A merged token sounds at the step of its
first base token. Decoding expands every token into its base tokens, so the notes, and the
number of notes a song's NLL is divided by for bits per note, are exactly the base scheme's.
Any scheme with one token per row can be the base (index as `bpe`; events and remi with their
own `merges`); the merged grammar asks the base's grammar, token by token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from tokenizers import Tokenizer, models, trainers

from midigen.encodings import (
    NO_PEDALS,
    Cursor,
    DecodeError,
    Encoded,
    Grammar,
    Scheme,
    SchemeGrammar,
)
from midigen.midi.files import Notes

FIRST_CHAR = 0x4E00  # base id i is the character chr(FIRST_CHAR + i) (a CJK block, as MidiTok)


@dataclass(frozen=True)
class BPE:
    """A flat scheme with `tokenizer`'s merges; ids below the base vocabulary's size are the
    base tokens themselves, merged tokens follow."""

    base: Scheme
    tokenizer: Tokenizer
    name: str = "bpe"  # the branch: bpe (index merged), or the merged scheme's own name
    pieces: list[np.ndarray] = field(init=False, repr=False)  # our id -> base tokens
    ours: np.ndarray = field(init=False, repr=False)  # the tokenizer's id -> ours
    notes_in: np.ndarray = field(init=False, repr=False)  # our id -> the notes it starts
    lengths: np.ndarray = field(init=False, repr=False)  # our id -> its base tokens' count

    def __post_init__(self) -> None:
        (size,) = self.base.fields
        learned = sorted(
            (i, text)
            for text, i in self.tokenizer.get_vocab().items()
            if len(text) > 1 or ord(text) - FIRST_CHAR >= size
        )
        pieces = [np.array([i]) for i in range(size)]
        ours = np.zeros(self.tokenizer.get_vocab_size(), dtype=np.int64)
        for text, i in self.tokenizer.get_vocab().items():
            if len(text) == 1:
                ours[i] = ord(text) - FIRST_CHAR
        for i, text in learned:
            ours[i] = len(pieces)
            pieces.append(np.array([ord(c) - FIRST_CHAR for c in text], dtype=np.int64))
        notes_in = np.array([self.base.note_counts(piece).sum() for piece in pieces])
        object.__setattr__(self, "pieces", pieces)
        object.__setattr__(self, "ours", ours)
        object.__setattr__(self, "notes_in", notes_in)
        object.__setattr__(self, "lengths", np.array([len(piece) for piece in pieces]))

    @classmethod
    def train(cls, base: Scheme, songs: list[np.ndarray], merges: int, name: str = "bpe") -> BPE:
        """Learn up to `merges` merges from the base tokens of the training songs."""
        (size,) = base.fields
        alphabet = [chr(FIRST_CHAR + i) for i in range(size)]
        tokenizer = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=size + merges,
            initial_alphabet=alphabet,
            limit_alphabet=size,
            min_frequency=2,
            show_progress=False,
        )
        tokenizer.train_from_iterator((text_of(s) for s in songs), trainer)
        return cls(base, tokenizer, name)

    @classmethod
    def from_json(cls, base: Scheme, text: str, name: str = "bpe") -> BPE:
        return cls(base, Tokenizer.from_str(text), name)

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @property
    def fields(self) -> tuple[int]:
        return (len(self.pieces),)

    def encode(self, notes: Notes, pedals: np.ndarray = NO_PEDALS) -> Encoded:
        base = self.base.encode(notes, pedals)
        return self.merge(base.tokens.reshape(-1), base.times)

    def merge(self, tokens: np.ndarray, times: np.ndarray) -> Encoded:
        """Base tokens (and the step of each) -> merged tokens, each at its first's step."""
        ids, first = self.merged(tokens)
        return Encoded(ids[:, None], np.asarray(times)[first])

    def merged(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Base tokens -> the merged tokens and where each one's first base token was."""
        # the BPE model alone: Tokenizer.encode's offsets and post-processing cost as much again
        learned = [token.id for token in self.tokenizer.model.tokenize(text_of(tokens))]
        ids = self.ours[np.asarray(learned, dtype=np.int64)]
        first = np.cumsum(self.lengths[ids]) - self.lengths[ids]  # one character per base token
        return ids, first

    def expand(self, tokens: np.ndarray) -> np.ndarray:
        """Merged tokens -> the base tokens they stand for."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        bad = np.flatnonzero((tokens < 0) | (tokens >= len(self.pieces)))
        if len(bad):
            raise DecodeError(f"token {bad[0]}: {tokens[bad[0]]} is not in the learned vocabulary")
        if not len(tokens):
            return tokens
        return np.concatenate([self.pieces[t] for t in tokens])

    def decode(self, tokens: np.ndarray) -> Notes:
        return self.base.decode(self.expand(tokens))

    def changes(
        self, notes: Notes, pedals: np.ndarray = NO_PEDALS, encoded: Encoded | None = None
    ) -> dict[str, int]:
        return self.base.changes(notes, pedals)

    @property
    def eos_row(self) -> tuple[int]:
        return self.base.eos_row  # base ids are their own merged ids

    pitch_range = (0, 0)  # none it can move: a merged token's pitches cannot move alone

    def pitches(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """None (training does not transpose this scheme, and says so)."""
        mask = np.zeros(np.shape(tokens), dtype=bool)
        return mask, np.zeros(0, dtype=np.int64)

    def kinds(self, tokens: np.ndarray) -> np.ndarray:
        """The base token's type, or "merged"."""
        tokens = np.asarray(tokens).reshape(-1)
        (size,) = self.base.fields
        base = self.base.kinds(np.minimum(tokens, size - 1))
        return np.where(tokens < size, base, "merged")

    def note_counts(self, tokens: np.ndarray) -> np.ndarray:
        """Notes each token starts (a merged token may hold several)."""
        return self.notes_in[np.asarray(tokens).reshape(-1)]

    @cached_property
    def grammar(self) -> MergedGrammar:
        return MergedGrammar(self)

    def allowed(self, prefix: np.ndarray) -> list[np.ndarray]:
        """The merged tokens whose every base token the base grammar allows in turn."""
        tokens = np.asarray(prefix, dtype=np.int64).reshape(-1).tolist()
        if not tokens:  # any piece that starts a song
            return [np.array([self.base.grammar.opens(int(p[0])) for p in self.pieces])]
        return [self.grammar.allowed([self.grammar.parse(tokens)])[0].copy()]


class MergedGrammar(SchemeGrammar):
    """The base grammar over merged tokens: a merged token may follow when its base tokens
    may, one after the other; it sounds where its first base token would."""

    def __init__(self, scheme: BPE):
        self.scheme, self.base = scheme, scheme.base.grammar
        self._rows: dict[tuple, np.ndarray] = {}

    def parse(self, tokens: list[int]) -> Cursor:
        return self.base.parse(self.scheme.expand(np.array(tokens)).tolist())

    def advance(self, cursor: Cursor, token: int) -> Cursor:
        """The cursor after `token`'s base tokens; DecodeError if the grammar does not allow it."""
        for base in self.scheme.expand(np.array([token])).tolist():
            cursor = self.base.advance(cursor, base)
        return cursor

    def sounds_at(self, cursor: Cursor, token: int) -> int:
        return self.base.sounds_at(cursor, int(self.scheme.pieces[token][0]))

    def may_end(self, cursor: Cursor) -> bool:
        """Where the base scheme may end (in the index score a merged token holding <eos> may
        come after a note, but the song cannot end before that note's duration)."""
        return self.base.may_end(cursor)

    def _row(self, cursor: Cursor, eos: bool) -> np.ndarray:
        key = (dataclasses.replace(cursor, step=0), eos)  # the mask does not depend on time
        if key not in self._rows:
            end = self.scheme.base.eos_row[0]
            self._rows[key] = np.array(
                [
                    _follows(self.base, cursor, piece) and (eos or end not in piece)
                    for piece in self.scheme.pieces
                ]
            )[None]
        return self._rows[key]


def _follows(grammar: Grammar, cursor: Cursor, piece: np.ndarray) -> bool:
    """Whether the base tokens `piece` may come one after the other from `cursor`."""
    for token in piece.tolist():
        if cursor.ended or not grammar.allowed([cursor])[0][token]:
            return False
        cursor = grammar.advance(cursor, token)
    return True


def text_of(tokens: np.ndarray) -> str:
    """Base tokens as the string the tokenizer reads: one character each (UTF-32 code units)."""
    codes = np.asarray(tokens, dtype=np.uint32).reshape(-1) + FIRST_CHAR
    return codes.astype("<u4").tobytes().decode("utf-32-le")
