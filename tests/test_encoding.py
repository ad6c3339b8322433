"""The three scores: the seed's example exactly, and every step invertible (property tests)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from builders import shards_via_stages
from hypothesis import given, settings
from hypothesis import strategies as st

from midigen.data.corpus import EncodeConfig, encode_bytes, roundtrip_bytes
from midigen.encodings.scores import (
    DecodeError,
    SparseScore,
    Vocab,
    decode_tokens,
    encode_notes,
    index_to_position,
    notes_to_sparse,
    position_to_index,
    position_to_sparse,
    sparse_to_notes,
    sparse_to_position,
)
from midigen.midi.files import (
    NOTE_CHANGES,
    Limits,
    Meter,
    Notes,
    SkipSong,
    end_overlaps,
    read_song,
    write_midi,
)

SEED_TOKENS = "<sos><n1><d4><sep><d1><n3><d2><sep><d5><n2><d2><n3><d2><sep><d2><eos>"
LIMITS = Limits(max_file_bytes=2**24, max_notes=10**6, max_steps=10**6)


def seed_notes() -> Notes:
    """The seed's sparse score: pitch 1 for 4 steps at step 0, pitch 3 at 1, pitches 2, 3 at 6."""
    return Notes(
        onset=np.array([0, 1, 6, 6]),
        program=np.zeros(4, dtype=np.int64),
        pitch=np.array([1, 3, 2, 3]),
        duration=np.array([4, 2, 2, 2]),
    )


def test_seed_example_sparse_position_and_tokens():
    sparse = notes_to_sparse(seed_notes())
    array = sparse.dense()
    assert array.shape == (8, 1, 128) and np.count_nonzero(array) == len(sparse.step) == 4
    assert array[:, 0, 1].tolist() == [4, 0, 0, 0, 0, 0, 0, 0]
    assert array[:, 0, 2].tolist() == [0, 0, 0, 0, 0, 0, 2, 0]
    assert array[:, 0, 3].tolist() == [0, 2, 0, 0, 0, 0, 2, 0]
    position = sparse_to_position(sparse, max_duration=32)
    assert position[:, :2].tolist() == [[1, 4], [-1, 1], [3, 2], [-1, 5], [2, 2], [3, 2], [-1, 2]]
    vocab = Vocab(max_duration=32)
    tokens, times = position_to_index(position, vocab)
    assert vocab.to_text(tokens) == SEED_TOKENS
    assert times.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 6, 6, 6, 6, 6, 6, 8]


def test_seed_example_decodes_back():
    vocab = Vocab(max_duration=32)
    assert decode_tokens(vocab.from_text(SEED_TOKENS), vocab).equals(seed_notes())


def test_vocab_layout():
    vocab = Vocab(max_duration=32)
    names = vocab.names()
    assert len(names) == len(vocab) == 4 + 128 + 32
    assert names[vocab.note(60)] == "<n60>" and names[vocab.duration(1)] == "<d1>"
    assert len(Vocab(8, instruments=True)) == 4 + 128 + 8 + 128
    kinds = vocab.kinds()
    assert kinds[vocab.sep] == 3 and kinds[vocab.note(0)] == 1 and kinds[vocab.duration(32)] == 2


def test_long_gaps_are_split_and_leading_silence_kept():
    vocab = Vocab(max_duration=8)
    notes = Notes(np.array([20]), np.array([0]), np.array([60]), np.array([3]))
    tokens, times = encode_notes(notes, vocab)
    assert vocab.to_text(tokens) == "<sos><sep><d8><sep><d8><sep><d4><n60><d3><sep><d3><eos>"
    assert times[-1] == 23
    assert decode_tokens(tokens, vocab).equals(notes)


def test_instrument_tokens_open_each_program_run_within_a_step():
    vocab = Vocab(max_duration=8, instruments=True)
    notes = Notes(
        onset=np.array([0, 0, 0, 3]),
        program=np.array([0, 0, 5, 5]),
        pitch=np.array([60, 64, 40, 41]),
        duration=np.array([8, 8, 8, 1]),
    )
    tokens, _ = encode_notes(notes, vocab)
    assert vocab.to_text(tokens) == (
        "<sos><i0><n60><d8><n64><d8><i5><n40><d8><sep><d3><i5><n41><d1><sep><d5><eos>"
    )
    assert decode_tokens(tokens, vocab).equals(notes)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("<n60><d4><eos>", "a song must start with <sos>"),
        ("<sos><n60><d4>", "a song must end with <eos>"),
        ("<sos><n60><n61><d4><eos>", "token 2: a duration must follow <n60>"),
        ("<sos><d4><eos>", "token 1 <d4>: expected a note or <sep>"),
        ("<sos><sep><eos>", "token 2: a duration must follow <sep>"),
        ("<sos><sep><d1><n60><eos>", "token 4: a duration must follow <n60>"),
    ],
)
def test_invalid_token_sequences_are_rejected_with_a_reason(text, problem):
    vocab = Vocab(max_duration=8)
    with pytest.raises(DecodeError) as error:
        index_to_position(vocab.from_text(text), vocab)
    assert str(error.value) == problem


@pytest.mark.parametrize("instruments", [False, True])
def test_ids_outside_the_vocabulary_are_rejected_by_number(instruments):
    vocab = Vocab(max_duration=8, instruments=instruments)
    for bad in (len(vocab), len(vocab) + 7, -1):
        with pytest.raises(DecodeError) as error:
            index_to_position([vocab.sos, bad, vocab.duration(1), vocab.eos], vocab)
        assert str(error.value) == f"token 1 {bad}: expected a note or <sep>"
    with pytest.raises(DecodeError) as error:  # ids inside it are named
        index_to_position([vocab.sos, vocab.pad, vocab.duration(1), vocab.eos], vocab)
    assert str(error.value) == "token 1 <pad>: expected a note or <sep>"


def test_a_note_must_be_followed_by_a_duration_not_the_next_id():
    """The id just past the durations is <i0> in instrument mode: not a duration."""
    vocab = Vocab(max_duration=8, instruments=True)
    tokens = [vocab.sos, vocab.program(0), vocab.note(60), vocab.program(0), vocab.eos]
    with pytest.raises(DecodeError, match="a duration must follow <n60>"):
        index_to_position(tokens, vocab)


def test_note_without_instrument_is_rejected_in_instrument_mode():
    vocab = Vocab(max_duration=8, instruments=True)
    for text in ("<sos><n60><d4><eos>", "<sos><i3><n60><d4><sep><d1><n62><d1><eos>"):
        with pytest.raises(DecodeError, match="before any instrument"):
            index_to_position(vocab.from_text(text), vocab)


def test_unknown_token_names_are_rejected_by_name():
    vocab = Vocab(max_duration=8)
    with pytest.raises(DecodeError) as error:
        vocab.from_text("<sos><d9><eos>")
    assert str(error.value) == "unknown token <d9>"
    nothing = vocab.from_text("")
    assert nothing.dtype == np.int64 and len(nothing) == 0


def test_instrument_vocabulary_names_and_kinds_every_id():
    vocab = Vocab(max_duration=8, instruments=True)
    names, kinds = vocab.names(), vocab.kinds()
    assert len(names) == len(kinds) == len(vocab) == 4 + 128 + 8 + 128
    assert names[-1] == "<i127>" and names[vocab.program(0)] == "<i0>"
    assert kinds.dtype.kind == "i"  # used as indices into per-kind tallies
    expected = [0, 0, 0, 3] + [1] * 128 + [2] * 8 + [4] * 128
    assert kinds.tolist() == expected


def test_an_empty_song_is_all_gaps_and_decodes_back():
    vocab = Vocab(max_duration=8)
    silent = Notes(*(np.zeros(0, dtype=np.int64) for _ in range(4)))
    tokens, times = encode_notes(silent, vocab)
    assert vocab.to_text(tokens) == "<sos><eos>"
    assert times.tolist() == [0, 0]
    position = index_to_position(tokens, vocab)
    assert position.shape == (0, 3) and position.dtype == np.int64
    sparse = position_to_sparse(position)
    assert sparse.steps == 0 and sparse_to_notes(sparse).equals(silent)
    rests = SparseScore.from_cells([], [], [], [], steps=20)
    assert sparse_to_position(rests, 8).tolist() == [[-1, 8, -1], [-1, 8, -1], [-1, 4, -1]]


def test_a_generated_note_may_outlast_the_last_gap():
    """Sampled songs can end on a sounding note: the song lasts until it ends."""
    vocab = Vocab(max_duration=8)
    sparse = position_to_sparse(index_to_position(vocab.from_text("<sos><n60><d8><eos>"), vocab))
    assert sparse.steps == 8 and sparse.dense().shape == (8, 1, 128)


def test_of_repeated_cells_the_last_written_wins():
    step, program, pitch, length = (
        [0, 0, 2, 0, 1, 0],
        [0, 0, 0, 0, 0, 9],
        [60, 62, 60, 60, 60, 60],
        [1, 2, 3, 4, 5, 6],
    )
    sparse = SparseScore.from_cells(
        *(np.array(a, dtype=np.int32) for a in (step, program, pitch, length)), steps=5
    )
    array = np.zeros((5, 2, 128), dtype=np.int64)
    for s, p, k, n in zip(step, program, pitch, length, strict=True):
        array[s, 0 if p == 0 else 1, k] = n
    dense = sparse.dense()
    assert dense.dtype == np.int64 and np.array_equal(dense, array)
    assert len(sparse.step) == 5 and sparse.programs == (0, 9)
    assert all(
        a.dtype == np.int64 for a in (sparse.step, sparse.instrument, sparse.pitch, sparse.length)
    )


def test_every_score_is_integer():
    notes = seed_notes()
    position = sparse_to_position(notes_to_sparse(notes), 32)
    assert position.dtype == np.int64
    back = decode_tokens(encode_notes(notes, Vocab(32))[0], Vocab(32))
    assert all(a.dtype == np.int64 for a in (back.onset, back.program, back.pitch, back.duration))


@st.composite
def note_sets(draw, instruments: bool = False, max_duration: int = 16) -> Notes:
    """Random quantized songs: unique (onset, program, pitch), durations in 1..max_duration."""
    n = draw(st.integers(1, 60))
    programs = st.sampled_from([0, 5, 40, 73]) if instruments else st.just(0)
    keys = draw(
        st.sets(
            st.tuples(st.integers(0, 300), programs, st.integers(0, 127)), min_size=1, max_size=n
        )
    )
    keys = sorted(keys)
    durations = draw(st.lists(st.integers(1, max_duration), min_size=len(keys), max_size=len(keys)))
    onset, program, pitch = (np.array(col, dtype=np.int64) for col in zip(*keys, strict=True))
    return Notes(onset, program, pitch, np.array(durations, dtype=np.int64))


@settings(max_examples=150, deadline=None)
@given(note_sets(), st.integers(1, 16))
def test_every_step_inverts(notes: Notes, max_duration: int):
    notes = Notes(notes.onset, notes.program, notes.pitch, np.minimum(notes.duration, max_duration))
    vocab = Vocab(max_duration)
    sparse = notes_to_sparse(notes)
    assert sparse_to_notes(sparse).equals(notes)
    position = sparse_to_position(sparse, max_duration)
    back = position_to_sparse(position)
    assert np.array_equal(back.dense(), sparse.dense()) and back.programs == sparse.programs
    assert all(np.array_equal(getattr(back, f), getattr(sparse, f)) for f in ("step", "pitch"))
    tokens, times = position_to_index(position, vocab)
    assert np.array_equal(index_to_position(tokens, vocab), position)
    assert times[-1] == notes.end and np.all(np.diff(times) >= 0)


@settings(max_examples=100, deadline=None)
@given(note_sets(instruments=True))
def test_instrument_mode_inverts(notes: Notes):
    vocab = Vocab(16, instruments=True)
    tokens, _ = encode_notes(notes, vocab)
    assert decode_tokens(tokens, vocab).equals(notes)


@settings(max_examples=60, deadline=None)
@given(note_sets(instruments=True), st.sampled_from([1, 2, 4, 12]))
def test_midi_round_trip_gives_back_the_quantized_notes(notes: Notes, steps_per_beat: int):
    notes = Notes(notes.onset, notes.program, notes.pitch, end_overlaps(*_columns(notes)))
    data = write_midi(notes, steps_per_beat)
    again = read_song(data, steps_per_beat, 16, merge_instruments=False, limits=LIMITS).notes
    assert again.equals(notes)
    config = EncodeConfig(steps_per_beat, 16, instruments=True, limits=LIMITS)
    assert roundtrip_bytes(data, config)


def _columns(notes: Notes) -> tuple[np.ndarray, ...]:
    return notes.onset, notes.program, notes.pitch, notes.duration


def test_a_note_ends_where_the_same_key_strikes_again():
    """Two merged voices on one pitch: MIDI cannot pair their note-offs, so the first is cut."""
    import symusic

    score = symusic.Score(4)
    for program, (time, duration) in [(0, (0, 12)), (1, (4, 2)), (2, (4, 8))]:
        track = symusic.Track(program=program)
        track.notes.append(symusic.Note(time, duration, 66, 90))
        score.tracks.append(track)
    merged = read_song(score.dumps_midi(), 4, 32, merge_instruments=True, limits=LIMITS).notes
    assert list(zip(merged.onset.tolist(), merged.duration.tolist(), strict=True)) == [
        (0, 4),
        (4, 8),
    ]
    kept = read_song(score.dumps_midi(), 4, 32, merge_instruments=False, limits=LIMITS).notes
    assert kept.duration.tolist() == [12, 2, 8]  # different instruments may overlap
    config = EncodeConfig(4, 32, instruments=False, limits=LIMITS)
    assert roundtrip_bytes(score.dumps_midi(), config)


def test_quantization_uses_ticks_not_seconds_and_keeps_longest_duplicate():
    """480 ticks per beat: a tempo change must not move notes; duplicates keep the longest."""
    import symusic

    score = symusic.Score(480)
    score.tempos.append(symusic.Tempo(0, 120.0))
    score.tempos.append(symusic.Tempo(480, 60.0))
    track = symusic.Track(program=0)
    for time, duration, pitch in [(0, 480, 60), (0, 240, 60), (960, 0, 62), (1430, 130, 64)]:
        track.notes.append(symusic.Note(time, duration, pitch, 90))
    score.tracks.append(track)
    notes = read_song(score.dumps_midi(), 4, 32, merge_instruments=True, limits=LIMITS).notes
    assert notes.onset.tolist() == [0, 8, 12]  # 1430 ticks = 11.92 steps -> 12
    assert notes.duration.tolist() == [4, 1, 1]  # longest duplicate; zero-length -> 1 step
    assert notes.pitch.tolist() == [60, 62, 64]


def test_bar_positions_follow_time_signature_changes():
    meter = Meter(np.array([0, 12]), np.array([12, 8]))  # 3/4 then 2/4 at 4 steps per beat
    steps = np.array([0, 5, 11, 12, 19, 20, 27])
    assert meter.bar_position(steps).tolist() == [0, 5, 11, 0, 7, 0, 7]


def test_too_long_song_is_skipped_before_allocation():
    import symusic

    score = symusic.Score(480)
    track = symusic.Track(program=0)
    track.notes.append(symusic.Note(480 * 10**6, 480, 60, 90))
    score.tracks.append(track)
    config = EncodeConfig(4, 32, False, Limits(2**24, 10**6, max_steps=65536))
    with pytest.raises(SkipSong) as skip:
        encode_bytes(score.dumps_midi(), config)
    assert skip.value.reason == "too_long"


def test_of_two_time_signatures_on_one_tick_the_later_wins():
    import symusic

    score = symusic.Score(4)
    score.time_signatures.append(symusic.TimeSignature(0, 4, 4))
    score.time_signatures.append(symusic.TimeSignature(0, 3, 4))
    track = symusic.Track(program=0)
    track.notes.append(symusic.Note(0, 4, 60, 90))
    score.tracks.append(track)
    meter = read_song(score.dumps_midi(), 4, 32, merge_instruments=True, limits=LIMITS).meter
    assert meter.length.tolist() == [12]


# ---- what quantizing drops or changes, counted by cause ---------------------------------------


def _score(tracks: list[tuple[int, bool, list[tuple[int, int, int]]]]):
    """A real MIDI file at 480 ticks per beat: (program, is_drum, [(tick, ticks, pitch)]) per
    track. At 4 steps per beat one step is 120 ticks."""
    import symusic

    score = symusic.Score(480)
    for program, is_drum, notes in tracks:
        track = symusic.Track(program=program, is_drum=is_drum)
        for time, duration, pitch in notes:
            track.notes.append(symusic.Note(time, duration, pitch, 90))
        score.tracks.append(track)
    return score.dumps_midi()


NOTE_CAUSES = _score(
    [
        (0, False, [(0, 480, 60), (0, 480, 60), (30, 240, 60)]),  # a re-struck note-on; 30
        # ticks later, step 0 again: merged by the grid
        (40, False, [(0, 480, 60), (480, 0, 62), (960, 50, 64)]),  # doubles the first track's
        # note (a duplicate once merged); zero length; 50 ticks < half a step: stretched
        (0, False, [(1440, 120 * 40, 65), (2400, 120 * 8, 67), (2880, 480, 67)]),  # 40 steps:
        # cut at max_duration 32; the 67 sounds on when struck again 4 steps later: cut
        (0, True, [(0, 120, 36), (480, 120, 38)]),  # drums: dropped
    ]
)


def test_every_dropped_or_changed_note_is_counted_by_cause():
    song = read_song(NOTE_CAUSES, 4, 32, merge_instruments=True, limits=LIMITS)
    assert song.changes == {
        "drums": 2,
        "duplicate": 2,  # the re-struck note-on, and the other track's copy of it
        "merged": 1,
        "zero_length": 1,
        "stretched": 1,
        "cut_max_duration": 1,
        "cut_restrike": 1,
    }
    assert len(song.notes) == 6 and song.notes_read == 11 and song.dropped == 5
    assert song.notes.duration.tolist() == [4, 1, 1, 32, 4, 4]


def test_instruments_kept_apart_are_no_duplicates():
    changes = read_song(NOTE_CAUSES, 4, 32, merge_instruments=False, limits=LIMITS).changes
    assert (changes["duplicate"], changes["merged"]) == (1, 1)  # program 40's 60 is its own


def test_encode_and_shard_count_the_changes_per_file_and_flag_heavy_losses(tmp_path):
    clean = write_midi(Notes(*(np.array(c) for c in ([0, 4], [0, 0], [60, 62], [4, 4]))), 4)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "causes.mid").write_bytes(NOTE_CAUSES)
    (corpus / "clean.mid").write_bytes(clean)
    shards = shards_via_stages(
        tmp_path, encode={"max_duration": 32}, source="dir", dir=str(corpus), test_fraction=0
    )
    with open(tmp_path / "encoded" / "chunk-0" / "songs.csv", newline="") as f:
        rows = {row["source"]: row for row in csv.DictReader(f)}
    assert {k: rows["causes.mid"][k] for k in ("notes", "notes_read", "duplicate", "drums")} == {
        "notes": "6",
        "notes_read": "11",
        "duplicate": "2",
        "drums": "2",
    }
    assert all(rows["clean.mid"][cause] == "0" for cause in NOTE_CHANGES)
    stats = json.loads((shards / "stats.json").read_text())["notes"]
    assert (stats["read"], stats["kept"], stats["dropped"], stats["changed"]) == (13, 8, 5, 4)
    assert stats["by_cause"]["merged"] == 1 and stats["by_cause"]["cut_restrike"] == 1
    assert stats["flagged"] == 1  # causes.mid: 5 of 11 > 0.2
    with open(shards / "flagged.csv", newline="") as f:
        flagged = list(csv.DictReader(f))
    assert [(r["source"], r["read"], r["dropped"]) for r in flagged] == [("causes.mid", "11", "5")]
    worst = stats["flagged_worst"]
    assert [(w["source"], w["read"], w["dropped"]) for w in worst] == [("causes.mid", 11, 5)]
    assert flagged[0]["causes"] == worst[0]["causes"] == "drums 2, duplicate 2, merged 1"
