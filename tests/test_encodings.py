"""Token schemes behind the one interface (src/midigen/encodings): round trips, what the lossy
ones change, and grammars whose every sampled song decodes (property tests)."""

from __future__ import annotations

import io

import mido
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from midigen.encodings import DecodeError, decode_song, whole_rows
from midigen.encodings import events as ev
from midigen.encodings.bpe import BPE
from midigen.encodings.codebook import EOS, SOS, Codebook
from midigen.encodings.events import Events
from midigen.encodings.index import Index
from midigen.encodings.remi import Remi
from midigen.encodings.scores import Vocab
from midigen.midi.files import Limits, Notes, read_song

BOOK = Codebook(steps=(0, 1, 2, 4, 8), durations=(1, 2, 4, 8))


def notes_of(rows: list[tuple[int, int, int]]) -> Notes:
    """(onset, pitch, duration) rows, any order, one instrument."""
    onset, pitch, duration = (np.array(c, dtype=np.int64) for c in zip(*rows, strict=True))
    order = np.lexsort((pitch, onset))
    zeros = np.zeros(len(rows), dtype=np.int64)
    return Notes(onset[order], zeros, pitch[order], duration[order])


# ---- codebook (MusicBox) --------------------------------------------------------------------


def test_codebook_rows_by_hand():
    """A chord of two on step 0, a note 3 steps later (3: a tie between 2 and 4, the lower
    wins), one 1 step after that lasting 9 (past the last duration: clamped to 8)."""
    song = notes_of([(0, 64, 2), (0, 60, 2), (3, 62, 4), (4, 60, 9)])
    encoded = BOOK.encode(song)
    assert encoded.tokens.tolist() == [
        [SOS, 0, 0], [60, 0, 1], [64, 0, 1], [62, 2, 2], [60, 1, 3], [EOS, 0, 0]
    ]  # fmt: skip
    assert encoded.times.tolist() == [0, 0, 0, 2, 3, 11]  # where decode puts them
    back = BOOK.decode(encoded.tokens)
    assert back.onset.tolist() == [0, 0, 2, 3] and back.pitch.tolist() == [60, 64, 62, 60]
    assert back.duration.tolist() == [2, 2, 4, 8]
    assert BOOK.changes(song) == {
        "merged_instruments": 0,
        "step_changed": 1,
        "step_clamped": 0,
        "duration_changed": 1,
        "duration_clamped": 1,
    }
    assert BOOK.note_counts(encoded.tokens).tolist() == [0, 1, 1, 1, 1, 0]


def test_codebook_merges_instruments_keeping_the_longer_note():
    song = Notes(
        onset=np.array([0, 0, 2]),
        program=np.array([0, 40, 0]),
        pitch=np.array([60, 60, 62]),
        duration=np.array([1, 4, 2]),
    )
    assert BOOK.changes(song)["merged_instruments"] == 1
    back = BOOK.decode(BOOK.encode(song).tokens)
    assert back.pitch.tolist() == [60, 62] and back.duration.tolist() == [4, 2]
    assert back.program.tolist() == [0, 0]


@st.composite
def songs(draw, steps=BOOK.steps, durations=BOOK.durations, free: bool = False) -> Notes:
    """Notes whose times between onsets and durations are codebook values (any, if `free`)."""
    n = draw(st.integers(0, 40))
    step = st.integers(0, 20) if free else st.sampled_from(steps)
    length = st.integers(1, 20) if free else st.sampled_from(durations)
    gaps = draw(st.lists(step, min_size=n, max_size=n))
    rows = {}
    for onset, pitch, duration in zip(
        np.cumsum(gaps, dtype=np.int64),
        draw(st.lists(st.integers(0, 127), min_size=n, max_size=n)),
        draw(st.lists(length, min_size=n, max_size=n)),
        strict=True,
    ):
        rows.setdefault((int(onset), pitch), duration)  # one note per onset and pitch
    return notes_of([(o, p, d) for (o, p), d in rows.items()]) if rows else notes_of_nothing()


def notes_of_nothing() -> Notes:
    return Notes(*(np.zeros(0, dtype=np.int64) for _ in range(4)))


@given(songs())
@settings(max_examples=200, deadline=None)
def test_codebook_round_trip_is_exact_on_codebook_values(song: Notes):
    encoded = BOOK.encode(song)
    assert BOOK.decode(encoded.tokens).equals(song)
    assert set(BOOK.changes(song).values()) == {0}
    assert encoded.times[1:-1].tolist() == song.onset.tolist()
    assert int(BOOK.note_counts(encoded.tokens).sum()) == len(song)


def snap(book: tuple[int, ...], value: int) -> int:
    """The codebook value nearest to `value`, the lower on a tie (by brute force)."""
    return min(book, key=lambda entry: (abs(entry - value), entry))


@given(songs(free=True))
@settings(max_examples=200, deadline=None)
def test_codebook_changes_exactly_what_it_counts(song: Notes):
    """Any notes: each onset moves by the snapped steps before it, each duration snaps, and
    `changes` counts the notes whose step or duration is not a codebook value."""
    back = BOOK.decode(BOOK.encode(song).tokens)
    ioi = np.diff(song.onset, prepend=0)
    want_onset = np.cumsum([snap(BOOK.steps, int(v)) for v in ioi], dtype=np.int64)
    want_duration = [snap(BOOK.durations, int(v)) for v in song.duration]
    assert back.pitch.tolist() == song.pitch.tolist()
    assert back.onset.tolist() == want_onset.tolist()
    assert back.duration.tolist() == want_duration
    changes = BOOK.changes(song)
    assert changes["step_changed"] == sum(int(v) not in BOOK.steps for v in ioi)
    assert changes["duration_changed"] == sum(int(v) not in BOOK.durations for v in song.duration)
    assert changes["step_clamped"] == int(np.count_nonzero(ioi > 8))
    assert changes["duration_clamped"] == int(np.count_nonzero(song.duration > 8))


@given(st.randoms(use_true_random=False), st.integers(0, 60))
@settings(max_examples=100, deadline=None)
def test_codebook_grammar_every_sampled_song_decodes(rng, limit: int):
    """Rows drawn at random among what `allowed` permits, <eos> forced at the limit."""
    rows: list[list[int]] = []
    while not rows or rows[-1][0] != EOS:
        masks = BOOK.allowed(np.array(rows, dtype=np.int64).reshape(-1, 3))
        if len(rows) >= limit and masks[0][EOS]:
            masks[0] = np.zeros_like(masks[0])
            masks[0][EOS] = True
        rows.append([rng.choice(np.flatnonzero(m).tolist()) for m in masks])
    song = BOOK.decode(np.array(rows))
    onsets = np.cumsum([BOOK.steps[step] for _, step, _ in rows[1:-1]], dtype=np.int64)
    distinct = {(int(o), pitch) for o, (pitch, _, _) in zip(onsets, rows[1:-1], strict=True)}
    assert len(song) == len(distinct)  # a sampled song may strike one key twice at once
    assert not BOOK.allowed(np.array(rows)).pop(0).any()  # nothing after <eos>


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([[60, 0, 0], [EOS, 0, 0]], "a song must start with a <sos> row"),
        ([[SOS, 0, 0], [60, 0, 0]], "a song must end with an <eos> row"),
        ([[SOS, 0, 0], [60, 5, 0], [EOS, 0, 0]], "row 1: field 1 value 5 not below 5"),
        ([[SOS, 0, 0], [60, 0, -1], [EOS, 0, 0]], "row 1: field 2 value -1 not below 4"),
        ([[SOS, 0, 0], [SOS, 0, 0], [EOS, 0, 0]], "row 1: <sos> or <eos> inside the song"),
    ],
)
def test_codebook_rows_it_cannot_read_are_named(rows, problem):
    with pytest.raises(DecodeError) as error:
        BOOK.decode(np.array(rows))
    assert str(error.value) == problem


@pytest.mark.parametrize(
    ("steps", "durations", "problem"),
    [
        (
            (1, 2),
            (1, 2),
            "the steps codebook must be distinct increasing steps from 0 (got [1, 2])",
        ),
        ((0, 2, 1), (1,), "the steps codebook must be distinct increasing steps from 0"),
        ((0,), (1, 1), "the durations codebook must be distinct increasing steps from 1"),
        ((0,), (), "the durations codebook must be distinct increasing steps from 1 (got [])"),
    ],
)
def test_a_bad_codebook_is_refused(steps, durations, problem):
    with pytest.raises(ValueError) as error:
        Codebook(steps, durations)
    assert str(error.value).startswith(problem)


def test_a_one_entry_codebook_snaps_everything_to_it():
    book = Codebook(steps=(0,), durations=(1,))
    back = book.decode(book.encode(notes_of([(0, 60, 3), (5, 62, 1)])).tokens)
    assert back.onset.tolist() == [0, 0] and back.duration.tolist() == [1, 1]


# ---- index (MIDIGen) through the interface --------------------------------------------------

INDEX = Index(Vocab(max_duration=8))


@given(songs(steps=(0, 1, 2, 3, 5, 9), durations=tuple(range(1, 9))))
@settings(max_examples=100, deadline=None)
def test_index_round_trip_is_exact(song: Notes):
    encoded = INDEX.encode(song)
    assert encoded.tokens.shape == (len(encoded.times), 1)
    assert INDEX.decode(encoded.tokens).equals(song)
    assert int(INDEX.note_counts(encoded.tokens).sum()) == len(song)
    assert INDEX.changes(song) == {}


@pytest.mark.parametrize("instruments", [False, True])
@given(rng=st.randoms(use_true_random=False), limit=st.integers(0, 60))
@settings(max_examples=50, deadline=None)
def test_index_grammar_every_sampled_song_decodes(instruments: bool, rng, limit: int):
    """Tokens drawn at random among what `allowed` permits, <eos> taken once past the limit."""
    scheme = Index(Vocab(max_duration=4, instruments=instruments))
    eos = scheme.vocab.eos
    tokens: list[int] = []
    while not tokens or tokens[-1] != eos:
        (mask,) = scheme.allowed(np.array(tokens, dtype=np.int64))
        choices = np.flatnonzero(mask).tolist()
        tokens.append(eos if len(tokens) >= limit and eos in choices else rng.choice(choices))
    song = scheme.decode(np.array(tokens))
    assert int(scheme.note_counts(np.array(tokens)).sum()) >= len(song)
    assert not scheme.allowed(np.array(tokens))[0].any()  # nothing after <eos>


# ---- learned vocabulary (BPE) on the index score ---------------------------------------------


def training_songs(seed: int, count: int = 30) -> list[Notes]:
    """Songs that repeat a few motifs, so that merges pay."""
    rng = np.random.default_rng(seed)
    motifs = [[(0, 60, 2), (2, 64, 2), (4, 67, 4)], [(0, 62, 1), (1, 65, 1), (2, 69, 2)]]
    songs = []
    for _ in range(count):
        rows, start = [], 0
        for _ in range(rng.integers(2, 6)):
            motif = motifs[rng.integers(len(motifs))]
            rows += [(start + o, p + int(rng.integers(0, 2)) * 12, d) for o, p, d in motif]
            start += 8
        songs.append(notes_of(rows))
    return songs


@pytest.fixture(scope="module")
def bpe() -> BPE:
    base = Index(Vocab(max_duration=8))
    return BPE.train(base, [base.encode(s).tokens.reshape(-1) for s in training_songs(0)], 40)


def test_bpe_learns_merges_across_time_steps(bpe: BPE):
    size = len(bpe.base.vocab)
    assert size < bpe.fields[0] <= size + 40
    sep = bpe.base.vocab.sep
    crossing = [p for p in bpe.pieces[size:] if sep in p[:-1].tolist()]
    assert crossing, "some merge spans a gap row into the next step"


@given(st.integers(0, 10**6))
@settings(max_examples=25, deadline=None)
def test_bpe_round_trip_is_exact_and_counts_the_same_notes(bpe: BPE, seed: int):
    """Unseen songs too: every merged token expands back to its base tokens, sounds at its
    first base token's step, and the notes are those of the base scheme."""
    for song in training_songs(seed, count=2):
        base = bpe.base.encode(song)
        merged = bpe.encode(song)
        assert len(merged.times) < len(base.times)
        assert np.array_equal(bpe.expand(merged.tokens), base.tokens.reshape(-1))
        starts = np.cumsum([0] + [len(bpe.pieces[t]) for t in merged.tokens[:-1, 0]])
        assert np.array_equal(merged.times, base.times[starts])
        assert bpe.decode(merged.tokens).equals(song)
        assert bpe.note_counts(merged.tokens).sum() == len(song)


def test_bpe_survives_its_json(bpe: BPE):
    again = BPE.from_json(bpe.base, bpe.to_json())
    song = training_songs(5, count=1)[0]
    assert np.array_equal(again.encode(song).tokens, bpe.encode(song).tokens)


def test_bpe_refuses_ids_it_never_learned(bpe: BPE):
    with pytest.raises(DecodeError) as error:
        bpe.decode(np.array([bpe.base.vocab.sos, bpe.fields[0], bpe.base.vocab.eos]))
    assert str(error.value) == f"token 1: {bpe.fields[0]} is not in the learned vocabulary"


@given(rng=st.randoms(use_true_random=False), cut=st.integers(1, 60))
@settings(max_examples=25, deadline=None)
def test_bpe_songs_cut_anywhere_end_only_where_the_index_score_may(bpe: BPE, rng, cut: int):
    """A continuation stopped by the length limit is cut back to where the song may end: never
    right after a note, though a merged token holding a duration and <eos> may follow one."""
    vocab = bpe.base.vocab
    holding_eos = [i for i, p in enumerate(bpe.pieces) if len(p) > 1 and vocab.eos in p]
    assert holding_eos, "some merge ends a song (else this test could not fail)"
    tokens: list[int] = []
    while len(tokens) < cut and (not tokens or vocab.eos not in bpe.pieces[tokens[-1]]):
        (mask,) = bpe.allowed(np.array(tokens, dtype=np.int64))
        tokens.append(rng.choice(np.flatnonzero(mask).tolist()))
    grammar = bpe.grammar
    kept = whole_rows(grammar, grammar.parse(tokens[:1]), tokens[1:])
    base = bpe.expand(np.array([tokens[0], *kept])).tolist()
    assert base[-1] == vocab.eos or not vocab.note_base <= base[-1] < vocab.duration_base
    decode_song(bpe, [tokens[0], *kept])  # ends where it may: decodes


# ---- merges on top of another flat scheme: events ------------------------------------------


@pytest.fixture(scope="module")
def events_bpe() -> BPE:
    base = Events(max_shift=4, velocity_bins=4, sustain="explicit")
    songs = [base.encode(s).tokens.reshape(-1) for s in training_songs(0)]
    return BPE.train(base, songs, 40, name="events")


@given(st.integers(0, 10**6))
@settings(max_examples=25, deadline=None)
def test_merged_events_round_trip_as_the_events_do(events_bpe: BPE, seed: int):
    """Merged events expand to the events (pedals too) and decode to the notes the events
    decode to, with the same notes counted."""
    pedals = np.array([[0, 6], [8, 20]])
    for song in training_songs(seed, count=2):
        base, merged = events_bpe.base.encode(song, pedals), events_bpe.encode(song, pedals)
        assert len(merged.times) < len(base.times)
        assert np.array_equal(events_bpe.expand(merged.tokens), base.tokens.reshape(-1))
        assert events_bpe.decode(merged.tokens).equals(events_bpe.base.decode(base.tokens))
        counted = events_bpe.note_counts(merged.tokens).sum()
        assert counted == events_bpe.base.note_counts(base.tokens).sum()
        assert events_bpe.changes(song, pedals) == events_bpe.base.changes(song, pedals)


@pytest.mark.parametrize("merged", ["bpe", "events_bpe"])
@given(rng=st.randoms(use_true_random=False), limit=st.integers(0, 40))
@settings(max_examples=25, deadline=None)
def test_merged_grammar_every_sampled_song_decodes(request, merged: str, rng, limit: int):
    """Sampled inside the merged grammar (index rows; events' keys sounding, the pedal, time
    shifts), every song ends and decodes, and nothing may follow its end."""
    scheme = request.getfixturevalue(merged)
    end = scheme.base.eos_row[0]
    ends = [i for i, p in enumerate(scheme.pieces) if p[-1] == end]
    tokens: list[int] = []
    while not tokens or scheme.pieces[tokens[-1]][-1] != end:
        (mask,) = scheme.allowed(np.array(tokens, dtype=np.int64))
        choices = np.flatnonzero(mask).tolist()
        closing = [c for c in choices if c in ends]
        tokens.append(rng.choice(closing if len(tokens) >= limit and closing else choices))
    scheme.decode(np.array(tokens))
    assert not scheme.allowed(np.array(tokens))[0].any()


# ---- MidiTok REMI through the interface ----------------------------------------------------

REMI = Remi(steps_per_beat=4, max_duration=32)


@st.composite
def remi_songs(draw) -> Notes:
    """Songs within what REMI keeps: pitches 21-108, durations up to 8 beats, two programs."""
    rows = draw(
        st.dictionaries(
            st.tuples(st.integers(0, 80), st.sampled_from([0, 41]), st.integers(21, 108)),
            st.integers(1, 32),
            max_size=30,
        )
    )
    if not rows:
        return notes_of_nothing()
    keys = sorted(rows)
    onset, program, pitch = (np.array(c, dtype=np.int64) for c in zip(*keys, strict=True))
    return Notes(onset, program, pitch, np.array([rows[k] for k in keys], dtype=np.int64))


@given(remi_songs())
@settings(max_examples=50, deadline=None)
def test_remi_round_trip_is_exact_within_its_range(song: Notes):
    encoded = REMI.encode(song)
    assert REMI.decode(encoded.tokens).equals(song)
    assert REMI.changes(song) == {"not_given_back": 0}
    counts = REMI.note_counts(encoded.tokens)
    assert counts.sum() == len(song)
    assert encoded.times[counts == 1].tolist() == sorted(song.onset.tolist())
    assert np.all(np.diff(encoded.times) >= 0)


def test_remi_counts_the_pitches_it_cannot_write():
    song = notes_of([(0, 10, 2), (0, 60, 2), (4, 120, 1)])
    assert REMI.changes(song) == {"not_given_back": 2}
    assert REMI.changes(song, encoded=REMI.encode(song)) == {"not_given_back": 2}  # no re-encoding
    empty = REMI.encode(notes_of_nothing())  # told what encode gave, it counts from that
    assert REMI.changes(song, encoded=empty) == {"not_given_back": 3}


@given(rng=st.randoms(use_true_random=False), limit=st.integers(0, 60))
@settings(max_examples=25, deadline=None)
def test_remi_grammar_every_sampled_song_decodes(rng, limit: int):
    kinds = REMI.types
    tokens: list[int] = []
    while not tokens or kinds[tokens[-1]] != "EOS":
        (mask,) = REMI.allowed(np.array(tokens, dtype=np.int64))
        choices = np.flatnonzero(mask).tolist()
        closing = [c for c in choices if kinds[c] in ("EOS", "Bar")]
        tokens.append(rng.choice(closing if len(tokens) >= limit and closing else choices))
    song = REMI.decode(np.array(tokens))
    assert len(song) <= int(REMI.note_counts(np.array(tokens)).sum())
    assert not REMI.allowed(np.array(tokens))[0].any()


def test_remi_sequences_it_cannot_read_are_named():
    vocab = REMI.tokenizer.vocab
    bos, eos, bar = vocab["BOS_None"], vocab["EOS_None"], vocab["Bar_None"]
    pitch = vocab["Pitch_60"]
    for ids, problem in (
        ([bar, eos], "a song must start with BOS"),
        ([bos, bar], "a song must end with EOS"),
        ([bos, pitch, eos], "token 1: Pitch cannot follow BOS"),
        ([bos, 10**6, eos], "token 1: 1000000 is not in the vocabulary"),
    ):
        with pytest.raises(DecodeError) as error:
            REMI.decode(np.array(ids))
        assert str(error.value) == problem


# ---- Performance-RNN events --------------------------------------------------------------------


def velocity_notes(rows: list[tuple[int, int, int, int]]) -> Notes:
    """(onset, pitch, duration, velocity) rows in Notes' order, one instrument."""
    onset, pitch, duration, velocity = (
        np.array(c, dtype=np.int64) for c in zip(*rows, strict=True)
    )
    order = np.lexsort((pitch, onset))
    zeros = np.zeros(len(rows), dtype=np.int64)
    return Notes(onset[order], zeros, pitch[order], duration[order], velocity[order])


def test_events_by_hand():
    """C and E at step 0 (velocities 90, 40), D at 3; the pedal down over steps 1-5. Four
    velocity bins: 1-32, 33-64, 65-96, 97-127, so 90 -> bin 2 (middle 80), 40 -> bin 1 (48),
    100 -> bin 3 (112)."""
    song = velocity_notes([(0, 60, 2, 90), (0, 64, 6, 40), (3, 62, 1, 100)])
    pedals = np.array([[1, 5]])
    on, off, shift = ev.NOTE_ON, ev.NOTE_OFF, ev.TIME_SHIFT
    plain = Events(max_shift=4, velocity_bins=4, sustain="ignore")
    vel = plain.velocity_base
    encoded = plain.encode(song, pedals)
    assert encoded.tokens.ravel().tolist() == [
        ev.SOS, vel + 2, on + 60, vel + 1, on + 64, shift + 1, off + 60, shift + 0,
        vel + 3, on + 62, shift + 0, off + 62, shift + 1, off + 64, ev.EOS,
    ]  # fmt: skip
    assert encoded.times.tolist() == [0, 0, 0, 0, 0, 0, 2, 2, 3, 3, 3, 4, 4, 6, 6]
    back = plain.decode(encoded.tokens)
    assert back.duration.tolist() == [2, 6, 1] and back.velocity.tolist() == [80, 48, 112]
    assert plain.changes(song, pedals) == {
        "merged_instruments": 0, "cut_restrike": 0, "velocity_binned": 3,
        "sustain_ignored": 2, "sustain_extended": 0,
    }  # fmt: skip
    held = Events(max_shift=4, velocity_bins=0, sustain="explicit")
    encoded = held.encode(song, pedals)
    down, up = held.sustain_on, held.sustain_on + 1
    assert encoded.tokens.ravel().tolist() == [
        ev.SOS, on + 60, on + 64, shift + 0, down, shift + 0, off + 60, shift + 0, on + 62,
        shift + 0, off + 62, shift + 0, up, shift + 0, off + 64, ev.EOS,
    ]  # fmt: skip
    back = held.decode(encoded.tokens)
    assert back.duration.tolist() == [5, 6, 2] and back.velocity is None  # C and D held to 5
    extended = Events(max_shift=4, velocity_bins=0, sustain="extend")
    assert extended.decode(extended.encode(song, pedals).tokens).duration.tolist() == [5, 6, 2]
    assert extended.changes(song, pedals)["sustain_extended"] == 2


def sounding_by_hand(song: Notes, pedals: np.ndarray, sustain: str) -> list[tuple[int, ...]]:
    """(onset, pitch, duration) the events should give back, by loops: one note per onset and
    key (the longest), cut where its key strikes again, held by the pedal unless ignored."""
    longest: dict[tuple[int, int], int] = {}
    for o, p, d in zip(
        song.onset.tolist(), song.pitch.tolist(), song.duration.tolist(), strict=True
    ):
        longest[(o, p)] = max(d, longest.get((o, p), 0))
    notes = sorted(longest.items())
    result = []
    for (onset, pitch), duration in notes:
        end = onset + duration
        if sustain != "ignore":
            for down, up in pedals.tolist():
                if down < end < up:
                    end = up
        strikes = [o for (o, p), _ in notes if p == pitch and o > onset]
        if strikes:
            end = min(end, strikes[0])
        result.append((onset, pitch, end - onset))
    return result


@st.composite
def pedal_spans(draw) -> np.ndarray:
    edges = sorted(set(draw(st.lists(st.integers(0, 60), max_size=6))))
    pairs = list(zip(edges[::2], edges[1::2], strict=False))  # an odd last edge is dropped
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


@pytest.mark.parametrize("sustain", ev.SUSTAIN_MODES)
@given(song=songs(free=True), pedals=pedal_spans(), velocities=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_events_give_back_the_sounding_notes(sustain, song, pedals, velocities):
    rng = np.random.default_rng(velocities)
    song = Notes(song.onset, song.program, song.pitch, song.duration,
                 rng.integers(1, 128, len(song)))  # fmt: skip
    scheme = Events(max_shift=8, velocity_bins=127, sustain=sustain)
    encoded = scheme.encode(song, pedals)
    back = scheme.decode(encoded.tokens)
    got = list(zip(back.onset.tolist(), back.pitch.tolist(), back.duration.tolist(), strict=True))
    assert got == sounding_by_hand(song, pedals, sustain)
    assert back.velocity.tolist() == song.velocity.tolist()  # 127 bins: every velocity kept
    assert scheme.changes(song, pedals)["velocity_binned"] == 0
    assert int(scheme.note_counts(encoded.tokens).sum()) == len(song)
    assert np.all(np.diff(encoded.times) >= 0)


@pytest.mark.parametrize("sustain", ev.SUSTAIN_MODES)
@given(rng=st.randoms(use_true_random=False), limit=st.integers(0, 60))
@settings(max_examples=30, deadline=None)
def test_events_grammar_every_sampled_song_decodes(sustain, rng, limit: int):
    scheme = Events(max_shift=4, velocity_bins=8, sustain=sustain)
    tokens: list[int] = []
    while not tokens or tokens[-1] != ev.EOS:
        (mask,) = scheme.allowed(np.array(tokens, dtype=np.int64))
        choices = np.flatnonzero(mask).tolist()
        tokens.append(ev.EOS if len(tokens) >= limit and ev.EOS in choices else rng.choice(choices))
    song = scheme.decode(np.array(tokens))
    now, struck = 0, set()  # a key struck, released and struck again at once is one note
    for token in tokens:
        if ev.TIME_SHIFT <= token < scheme.velocity_base:
            now += token - ev.TIME_SHIFT + 1
        elif ev.NOTE_ON <= token < ev.NOTE_OFF:
            struck.add((now, token - ev.NOTE_ON))
    assert len(song) == len(struck) and np.all(song.duration >= 1)


def test_events_refuse_what_they_cannot_read():
    scheme = Events(max_shift=4, velocity_bins=0, sustain="ignore")
    for tokens, problem in (
        ([ev.NOTE_ON + 60, ev.EOS], "a song must start with <sos>"),
        ([ev.SOS, ev.NOTE_ON + 60], "a song must end with <eos>"),
        ([ev.SOS, scheme.fields[0], ev.EOS], f"token 1: {scheme.fields[0]} is not an event here"),
        ([ev.SOS, ev.PAD, ev.EOS], "token 1: 0 is not an event here"),
    ):
        with pytest.raises(DecodeError) as error:
            scheme.decode(np.array(tokens))
        assert str(error.value) == problem
    with pytest.raises(ValueError, match="sustain must be one of"):
        Events(max_shift=4, velocity_bins=0, sustain="hold")


def test_midi_files_give_their_velocities_and_sustain_pedal():
    """A real MIDI file (mido): two notes with velocities; the pedal down from tick 2 to 10
    (steps 1 to 5), then pressed and released on one tick (no span), and a pedal on the drum
    channel (ignored)."""
    song_file = mido.MidiFile(ticks_per_beat=8)  # two ticks per step at 4 steps per beat
    piano, drums = mido.MidiTrack(), mido.MidiTrack()
    song_file.tracks += [piano, drums]
    piano += [
        mido.Message("note_on", note=60, velocity=90, time=0),
        mido.Message("control_change", control=64, value=127, time=2),
        mido.Message("note_off", note=60, time=2),
        mido.Message("note_on", note=62, velocity=30, time=0),
        mido.Message("control_change", control=64, value=0, time=6),
        mido.Message("control_change", control=64, value=127, time=2),
        mido.Message("control_change", control=64, value=0, time=0),
        mido.Message("note_off", note=62, time=4),
    ]
    drums += [
        mido.Message("note_on", channel=9, note=36, velocity=100, time=0),
        mido.Message("control_change", channel=9, control=64, value=127, time=0),
        mido.Message("control_change", channel=9, control=64, value=0, time=30),
    ]
    data = io.BytesIO()
    song_file.save(file=data)
    limits = Limits(max_file_bytes=2**20, max_notes=100, max_steps=1000)
    song = read_song(data.getvalue(), 4, 32, True, limits)
    assert song.notes.velocity.tolist() == [90, 30] and song.notes.onset.tolist() == [0, 2]
    assert song.pedals.tolist() == [[1, 5]]


# ---- scheme parameters at their edges (issue 30) -----------------------------------------------


def one_note_each(values: list[int], gap: int = 8) -> Notes:
    """A note per value, `gap` steps apart, pitch 60 + i (velocity: the value)."""
    n = len(values)
    onset = np.arange(n, dtype=np.int64) * gap
    return Notes(
        onset, np.zeros(n, np.int64), 60 + np.arange(n) % 60, np.full(n, 2), np.array(values)
    )


def equal_bins(count: int) -> list[list[int]]:
    """1..127 cut into `count` bins as equal as whole velocities allow, by the spec's words
    ("equal bins of 1..127"): velocity v is in bin floor((v - 1) * count / 127), worked out
    here with fractions, not with the scheme's integer formula."""
    from fractions import Fraction

    bins: list[list[int]] = [[] for _ in range(count)]
    for v in range(1, 128):
        bins[int(Fraction(v - 1) * count / 127)].append(v)
    return bins


@pytest.mark.parametrize("count", [1, 2, 3, 5, 16, 32, 100, 126, 127])
def test_every_velocity_decodes_to_the_middle_of_its_equal_bin(count: int):
    """Every velocity 1..127, so every bin edge and both its sides, for several bin counts:
    a velocity comes back as the (lower) middle of the equal bin it falls in."""
    scheme = Events(max_shift=16, velocity_bins=count, sustain="ignore")
    decoded = scheme.decode(scheme.encode(one_note_each(list(range(1, 128)))).tokens)
    middle = {v: members[(len(members) - 1) // 2] for members in equal_bins(count) for v in members}
    assert decoded.velocity.tolist() == [middle[v] for v in range(1, 128)]


@pytest.mark.parametrize("max_shift", [1, 3, 16])
def test_time_shifts_round_trip_at_and_around_each_multiple_of_the_longest(max_shift: int):
    """Gaps of m * max_shift - 1, m * max_shift and m * max_shift + 1 between onsets: each
    written as whole shifts and a remainder, each decoded to the same onset."""
    gaps = sorted({m * max_shift + d for m in range(4) for d in (-1, 0, 1)} - {0, -1})
    onset = np.cumsum([0, *gaps]).astype(np.int64)
    n = len(onset)
    notes = Notes(onset, np.zeros(n, np.int64), 60 + np.arange(n), np.ones(n, np.int64))
    scheme = Events(max_shift=max_shift, velocity_bins=0, sustain="ignore")
    assert scheme.decode(scheme.encode(notes).tokens).onset.tolist() == onset.tolist()


@pytest.mark.parametrize(
    "book",
    [(1, 2, 4, 8), (1, 3, 6, 12, 24, 32), (1, 5, 11)],
)
def test_codebook_values_between_entries_snap_to_the_nearest_one_the_lower_on_a_tie(book):
    """Durations at, between and past the entries of several codebooks (and the same book as
    steps between onsets): each comes back as the nearest entry, the lower one when two are
    as near, the last one past the end."""

    def snapped(value: int) -> int:
        return min(book, key=lambda entry: (abs(entry - value), entry))

    values = list(range(1, book[-1] + 3))
    durations = np.array(values, dtype=np.int64)
    n = len(values)
    scheme = Codebook(steps=(0, *book), durations=book)
    spaced = Notes(np.arange(n) * 64, np.zeros(n, np.int64), 60 + np.arange(n), durations)
    decoded = scheme.decode(scheme.encode(spaced).tokens)
    assert decoded.duration.tolist() == [snapped(v) for v in values]
    onsets = np.cumsum([0, *values]).astype(np.int64)  # the gaps between onsets: the values
    stepped = Notes(
        onsets, np.zeros(n + 1, np.int64), 60 + np.arange(n + 1) % 60, np.ones(n + 1, np.int64)
    )
    decoded = scheme.decode(Codebook(steps=(0, *book), durations=(1,)).encode(stepped).tokens)
    assert np.diff(decoded.onset).tolist() == [snapped(v) for v in values]


# ---- what the loss by type and transposition read: kinds and pitches, every scheme ----------


@pytest.mark.parametrize(("bins", "sustain"), [(0, "ignore"), (4, "explicit"), (127, "extend")])
def test_events_kinds_name_every_token_id_as_the_layout_does(bins: int, sustain: str):
    """The module doc's layout, from <eos> on: NOTE_ON, NOTE_OFF per key, TIME_SHIFT per step
    count, a VELOCITY per bin, the two pedal tokens in explicit mode."""
    scheme = Events(max_shift=6, velocity_bins=bins, sustain=sustain)
    pedal = 2 if sustain == "explicit" else 0
    want = ["eos", *["note_on"] * 128, *["note_off"] * 128, *["time_shift"] * 6]
    want += ["velocity"] * bins + ["sustain"] * pedal
    assert scheme.kinds(np.arange(ev.EOS, scheme.fields[0])).tolist() == want


def test_codebook_kinds_name_a_row_by_its_pitch_field():
    tokens = BOOK.encode(notes_of([(0, 0, 1), (1, 127, 2), (3, 64, 4)])).tokens
    assert BOOK.kinds(tokens[1:]).tolist() == ["note", "note", "note", "eos"]


def test_merged_tokens_are_their_own_kind_and_the_rest_keep_the_base_kinds(bpe: BPE):
    (size,) = bpe.base.fields
    ids = np.arange(bpe.fields[0])
    kinds = bpe.kinds(ids)
    assert kinds[:size].tolist() == bpe.base.kinds(ids[:size]).tolist()
    assert set(kinds[size:]) == {"merged"} and len(kinds) > size


@pytest.mark.parametrize(
    "scheme",
    [BOOK, INDEX, Events(max_shift=4, velocity_bins=4, sustain="explicit"), REMI],
    ids=["codebook", "index", "events", "remi"],
)
@given(song=songs(), interval=st.integers(-5, 5))
@settings(max_examples=40, deadline=None)
def test_adding_an_interval_where_pitches_says_transposes_the_song(scheme, song, interval):
    """Training's pitch shift adds the interval to the tokens `pitches` marks: decoded, that is
    the song moved by the interval, and every token it left alone kept its kind."""
    low, high = scheme.pitch_range  # a shift past it is refused before tokens are touched
    rows = {(o, low + 5 + p % (high - low - 10)): d for o, p, d in song_rows(song)}
    song = notes_of([(o, p, d) for (o, p), d in rows.items()]) if rows else song
    tokens = scheme.encode(song).tokens
    where, pitches = scheme.pitches(tokens)
    assert set(pitches.tolist()) == set(song.pitch.tolist())
    moved = tokens.copy()
    moved[where] += interval
    before, after = scheme.decode(tokens), scheme.decode(moved)
    assert after.pitch.tolist() == (before.pitch + interval).tolist()
    assert after.onset.tolist() == before.onset.tolist()
    assert after.duration.tolist() == before.duration.tolist()
    assert scheme.kinds(moved).tolist() == scheme.kinds(tokens).tolist()


def song_rows(song: Notes) -> list[tuple[int, int, int]]:
    return list(zip(song.onset.tolist(), song.pitch.tolist(), song.duration.tolist(), strict=True))


def test_merged_tokens_are_never_transposed(bpe: BPE):
    tokens = bpe.encode(training_songs(1)[0]).tokens
    where, pitches = bpe.pitches(tokens)
    assert where.shape == tokens.shape and not where.any() and len(pitches) == 0


def test_events_long_gaps_velocity_bins_and_where_each_token_sounds():
    """Velocities 40 and 50 share bin 1 (33-64): one VELOCITY token serves both. A gap of 9
    steps with shifts of at most 4: 4, 4 and 1, each placed where it starts."""
    scheme = Events(max_shift=4, velocity_bins=4, sustain="ignore")
    on, off, shift, vel = ev.NOTE_ON, ev.NOTE_OFF, ev.TIME_SHIFT, scheme.velocity_base
    encoded = scheme.encode(velocity_notes([(0, 60, 1, 40), (10, 62, 1, 50)]))
    assert encoded.tokens.ravel().tolist() == [
        ev.SOS, vel + 1, on + 60, shift, off + 60, shift + 3, shift + 3, shift, on + 62, shift,
        off + 62, ev.EOS,
    ]  # fmt: skip
    assert encoded.times.tolist() == [0, 0, 0, 0, 1, 1, 5, 9, 10, 10, 11, 11]
    assert scheme.decode(encoded.tokens).velocity.tolist() == [48, 48]
    empty = scheme.encode(notes_of_nothing())
    assert empty.tokens.ravel().tolist() == [ev.SOS, ev.EOS] and empty.times.tolist() == [0, 0]


@pytest.mark.parametrize("bin_", range(4))
def test_events_write_the_first_notes_velocity_whatever_its_bin(bin_: int):
    scheme = Events(max_shift=4, velocity_bins=4, sustain="ignore")
    velocity = 1 + bin_ * 32  # the lowest velocity of each bin of 1-32, 33-64, 65-96, 97-127
    encoded = scheme.encode(velocity_notes([(0, 60, 1, velocity)]))
    assert encoded.tokens.ravel().tolist()[1] == scheme.velocity_base + bin_
    assert scheme.decode(encoded.tokens).velocity.tolist() == [scheme._velocity_of(bin_)]


def test_events_decode_what_encode_never_writes():
    """Before any VELOCITY a note has MIDI's usual 64; a key struck while sounding ends the
    note it was playing; a NOTE_OFF of a silent key changes nothing."""
    scheme = Events(max_shift=4, velocity_bins=4, sustain="ignore")
    on, off, shift = ev.NOTE_ON, ev.NOTE_OFF, ev.TIME_SHIFT
    tokens = [ev.SOS, off + 61, on + 60, shift + 1, on + 60, shift, off + 60, ev.EOS]
    song = scheme.decode(np.array(tokens))
    assert song.onset.tolist() == [0, 2] and song.duration.tolist() == [2, 1]
    assert song.pitch.tolist() == [60, 60] and song.velocity.tolist() == [64, 64]


@pytest.mark.parametrize(("max_shift", "bins"), [(0, 4), (4, -1), (4, 128)])
def test_events_refuse_settings_outside_their_ranges(max_shift: int, bins: int):
    with pytest.raises(ValueError, match=r"max_shift >= 1 and 0\.\.127 velocity bins"):
        Events(max_shift=max_shift, velocity_bins=bins, sustain="ignore")
    assert Events(max_shift=1, velocity_bins=127, sustain="ignore").fields == (ev.TIME_SHIFT + 128,)


@pytest.mark.parametrize(
    "scheme",
    [
        BOOK, INDEX, REMI, Events(max_shift=4, velocity_bins=0, sustain="extend"),
        Events(max_shift=4, velocity_bins=8, sustain="explicit"),
    ],
    ids=["codebook", "index", "remi", "events", "events-velocities"],
)  # fmt: skip
def test_every_scheme_writes_and_reads_whole_numbers(scheme):
    """Token ids and times are int64, and so is every column of the notes a song decodes to
    (MIDI writing and the shards' arrays take nothing else)."""
    song = velocity_notes([(0, 60, 2, 90), (0, 64, 4, 40), (3, 62, 1, 100), (8, 67, 8, 70)])
    encoded = scheme.encode(song)
    assert encoded.tokens.dtype == np.int64 and encoded.times.dtype == np.int64
    back = scheme.decode(encoded.tokens)
    columns = [back.onset, back.program, back.pitch, back.duration]
    columns += [] if back.velocity is None else [back.velocity]
    assert all(c.dtype == np.int64 and c.shape == (len(song),) for c in columns)


def refused(grammar, tokens: list) -> str:
    with pytest.raises(DecodeError) as error:
        grammar.parse(tokens)
    return str(error.value)


@pytest.mark.parametrize("sustain", ["ignore", "explicit"])
def test_the_events_grammar_refuses_each_kind_of_wrong_token(sustain: str):
    """What generation's masks and the continuation parser rely on: every token the grammar
    does not allow is refused by name, never an IndexError or a silent pass."""
    scheme = Events(max_shift=4, velocity_bins=4, sustain=sustain)
    grammar, on, off = scheme.grammar, ev.NOTE_ON, ev.NOTE_OFF
    size = scheme.fields[0]
    for tokens, token in (
        ([ev.SOS, size], size),  # past the vocabulary
        ([ev.SOS, -1], -1),
        ([ev.SOS, off + 60], off + 60),  # releasing a silent key
        ([ev.SOS, on + 60, on + 60], on + 60),  # striking a sounding one
        ([ev.SOS, ev.EOS, on + 60], on + 60),  # anything after <eos>
        ([ev.SOS, ev.SOS], ev.SOS),
    ):
        assert refused(grammar, tokens) == f"token {token} cannot follow here"
    cursor = grammar.parse([ev.SOS, on + 60, ev.TIME_SHIFT + 2, off + 60])
    assert cursor.step == 3 and cursor.sounding == frozenset() and not cursor.ended
    if sustain == "explicit":
        down, up = scheme.sustain_on, scheme.sustain_on + 1
        assert refused(grammar, [ev.SOS, up]) == f"token {up} cannot follow here"
        assert grammar.parse([ev.SOS, down]).pedal_down
        assert not grammar.parse([ev.SOS, down, up]).pedal_down
        assert refused(grammar, [ev.SOS, down, down]) == f"token {down} cannot follow here"


def test_the_codebook_grammar_refuses_rows_it_cannot_read():
    scheme = Codebook(steps=(0, 1, 2, 4, 8), durations=(1, 2, 4, 8))  # its own grammar
    grammar = scheme.grammar
    for rows in (
        [[SOS, 0, 0], [60, 0]],  # two fields
        [[SOS, 0, 0], [60, 5, 0]],  # a step past the codebook
        [[SOS, 0, 0], [60, 0, 4]],  # a duration past it
        [[SOS, 0, 0], [scheme.fields[0], 0, 0]],  # a pitch past the vocabulary
        [[SOS, 0, 0], [60, -1, 0]],
        [[SOS, 0, 0], [SOS, 0, 0]],
        [[SOS, 0, 0], [EOS, 0, 0], [60, 0, 0]],  # anything after <eos>
    ):
        assert refused(grammar, rows) == f"row {rows[-1]} cannot follow here"
    cursor = grammar.parse([[SOS, 0, 0], [60, 3, 0], [62, 2, 1]])
    assert cursor.step == 4 + 2 and not cursor.ended
    assert grammar.sounds_at(cursor, [64, 4, 0]) == 6 + 8
    ended = grammar.advance(cursor, [EOS, 0, 0])
    assert ended.ended and ended.step == 6 and grammar.sounds_at(cursor, [EOS, 0, 0]) == 6
