"""`midigen continue`: a trained model continues a MIDI file the project never saw (written here
with mido), through the real train stage's model folder and the real command line; a corrupt
file or a model folder without its scheme gets one clear error and writes nothing."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import mido
import pytest
from builders import TINY_MODEL, shards_via_stages

from midigen.data.corpus import EncodeConfig
from midigen.encodings.catalog import MERGES_FILE, SCHEME_FILE
from midigen.errors import MidigenError
from midigen.generation.continuation import continue_midi
from midigen.midi.files import read_song
from midigen.params import load_params, validate_params
from midigen.stages import train as train_stage

ROOT = Path(__file__).resolve().parents[1]
PARAMS = load_params(ROOT / "params.yaml")
ENCODE = {**PARAMS["encode"], "steps_per_beat": 4, "max_duration": 8, "bpe": {"merges": 32}}
GENERATE = {**PARAMS["generate"], "length": 24, "min_length": 4}
MELODY = [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65]  # quarter notes, 3/4: four bars


@pytest.fixture(scope="module", params=["index", "bpe"])
def model_dir(request, tmp_path_factory) -> Path:
    """An xl_knn model trained for two steps by the real train stage on a dozen chorales."""
    root = tmp_path_factory.mktemp(request.param)
    download = dict(source="bach", max_files=16, val_fraction=0.2, test_fraction=0.2)
    shards = shards_via_stages(root, ENCODE, request.param, **download)
    params = validate_params(
        {
            **PARAMS,
            "encode": ENCODE,
            "model": {**PARAMS["model"], **TINY_MODEL},
            "train": {**PARAMS["train"], "steps": 2, "eval_every": 2, "checkpoint_every": 2},
        }
    )
    args = argparse.Namespace(
        scheme=request.param,
        shards=shards,
        variant="xl_knn",
        out=root / "models" / request.param / "xl_knn",
        metrics=root / "live",
        resume=False,
        checkpoints=root / "checkpoints",
    )
    train_stage.run(args, params)
    for name in (SCHEME_FILE, MERGES_FILE):  # the model folder carries its scheme
        if (shards / name).exists():
            assert (args.out / name).read_bytes() == (shards / name).read_bytes()
    assert (args.out / MERGES_FILE).exists() == (request.param == "bpe")
    return args.out


def write_song(path: Path, bpm: int = 90, parts: dict[int, int] | None = None) -> Path:
    """A melody in 3/4 at `bpm` with 480 ticks per beat, written with mido: one track per
    entry of `parts` (program: transposition), by default one violin (program 40)."""
    midi = mido.MidiFile(ticks_per_beat=480)
    for channel, (program, shift) in enumerate((parts or {40: 0}).items()):
        track = mido.MidiTrack(
            [
                mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0),
                mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0),
                mido.MetaMessage("track_name", name="my tune", time=0),
                mido.Message("program_change", channel=channel, program=program, time=0),
            ]
        )
        for pitch in MELODY:
            note = {"note": pitch + shift, "channel": channel}
            track.append(mido.Message("note_on", velocity=80, time=0, **note))
            track.append(mido.Message("note_off", velocity=0, time=480, **note))
        midi.tracks.append(track)
    midi.save(path)
    return path


def style_of(path: Path) -> tuple[list[float], list[tuple[int, int]], set[int]]:
    """A written MIDI file's tempos (bpm), time signatures and the programs its notes play."""
    import symusic

    score = symusic.Score.from_file(str(path))
    tempos = [round(t.qpm, 3) for t in score.tempos]
    meters = [(m.numerator, m.denominator) for m in score.time_signatures]
    return tempos, meters, {t.program for t in score.tracks if len(t.notes)}


def notes_of(path: Path) -> list[tuple[int, int]]:
    """(onset step, pitch) of a written MIDI file, on the 4-steps-per-beat grid."""
    song = read_song(path.read_bytes(), 4, 8, True, EncodeConfig.from_params(ENCODE).limits)
    return list(zip(song.notes.onset.tolist(), song.notes.pitch.tolist(), strict=True))


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    sections = json.dumps({"encode": ENCODE, "generate": GENERATE})
    return subprocess.run(
        [sys.executable, "-m", "midigen", "continue", *argv, "--params-json", sections],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,  # a read that blocks fails the test instead of hanging it
    )


def test_a_new_midi_file_is_continued_after_its_first_bars(model_dir, tmp_path):
    song = write_song(tmp_path / "tune.mid")
    result = run_cli(str(song), "--model", str(model_dir), "--bars", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "continued" / "tune"
    assert "midigen continue: tune.mid: 6 notes of prompt" in result.stdout
    assert result.stdout.rstrip().endswith("-> continued/tune")
    opening = [(4 * i, pitch) for i, pitch in enumerate(MELODY[:6])]  # two bars of 3/4
    assert notes_of(out / "prompt.mid") == opening
    continued = notes_of(out / "continued.mid")
    assert continued[:6] == opening  # the prompt, then the model's notes after it
    assert all(onset >= 4 * 6 for onset, _ in continued[6:])
    for piece in ("prompt", "continued"):
        assert (out / f"{piece}.png").stat().st_size > 0


def test_the_python_api_continues_the_whole_file_by_default(model_dir, tmp_path):
    song = write_song(tmp_path / "tune.mid")
    done = continue_midi(song, model_dir, tmp_path / "out", ENCODE, GENERATE, seed=3)
    assert done.prompt_notes == len(MELODY)
    assert 1 <= done.generated_tokens <= GENERATE["length"]
    assert notes_of(tmp_path / "out" / done.prompt.mid) == [
        (4 * i, pitch) for i, pitch in enumerate(MELODY)
    ]
    continue_midi(song, model_dir, tmp_path / "again", ENCODE, GENERATE, seed=3)
    assert (tmp_path / "again" / "continued.mid").read_bytes() == (
        tmp_path / "out" / "continued.mid"
    ).read_bytes()  # the seed decides


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"MThd\x00\x00\x00\x06garbage", "not a MIDI file midigen can continue"), (b"", "empty")],
)
def test_a_corrupt_file_is_one_clear_error_and_nothing_is_written(
    model_dir, tmp_path, content, problem
):
    bad = tmp_path / "broken.mid"
    bad.write_bytes(content)
    result = run_cli(str(bad), "--model", str(model_dir), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("midigen continue: error: ")
    assert str(bad) in lines[0] and problem in lines[0]
    assert not (tmp_path / "continued").exists()


def test_a_model_folder_without_its_scheme_is_refused(model_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.pt").write_bytes((model_dir / "model.pt").read_bytes())
    with pytest.raises(MidigenError, match="no scheme.json beside the model"):
        continue_midi(write_song(tmp_path / "t.mid"), bare, tmp_path / "o", ENCODE, GENERATE)
    song = str(tmp_path / "t.mid")
    result = run_cli(song, "--model", str(model_dir), "--bars", "0", cwd=tmp_path)
    assert result.returncode == 2 and "--bars must be at least 1 (got 0)" in result.stderr


def test_a_fifo_is_refused_at_once_not_read_forever(model_dir, tmp_path):
    """Issue 27: `midigen continue some.fifo` blocked forever; the encode stage skips FIFOs,
    and so does continue now, with one line."""
    pipe = tmp_path / "pipe.mid"
    os.mkfifo(pipe)
    result = run_cli(str(pipe), "--model", str(model_dir), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"midigen continue: error: {pipe}: cannot be read (not a regular file (a FIFO, "
        "device or folder))"
    )
    assert not (tmp_path / "continued").exists()


def test_the_continuation_keeps_the_songs_tempo_meter_and_instrument(model_dir, tmp_path):
    """Issue 27: continuations played at 120 bpm as program 0 whatever the song. A model that
    merged instruments writes them in the song's most common program, and says so."""
    song = write_song(tmp_path / "tune.mid", bpm=96)
    done = continue_midi(song, model_dir, tmp_path / "out", ENCODE, GENERATE, bars=2, seed=3)
    assert done.program == 40
    for piece in ("prompt.mid", "continued.mid"):
        assert style_of(tmp_path / "out" / piece) == ([96.0], [(3, 4)], {40})


@pytest.fixture(scope="module")
def program_model(tmp_path_factory) -> Path:
    """An xl model of `encode.instruments: program`, two steps of the real train stage."""
    root = tmp_path_factory.mktemp("program")
    encode = {**ENCODE, "instruments": "program"}
    download = dict(source="bach", max_files=16, val_fraction=0.2, test_fraction=0.2)
    shards = shards_via_stages(root, encode, "index", **download)
    params = validate_params(
        {
            **PARAMS,
            "encode": encode,
            "model": {**PARAMS["model"], **TINY_MODEL},
            "train": {**PARAMS["train"], "steps": 2, "eval_every": 2, "checkpoint_every": 2},
        }
    )
    out = root / "models" / "index" / "xl"
    args = argparse.Namespace(
        scheme="index",
        shards=shards,
        variant="xl",
        out=out,
        metrics=root / "live",
        resume=False,
        checkpoints=root / "checkpoints",
    )
    train_stage.run(args, params)
    return out


def test_a_song_of_two_instruments_comes_back_with_both(program_model, tmp_path):
    """The must-show of issue 27: a 3/4 song at 96 bpm for violin and cello, continued by a
    model that keeps instruments apart, plays at 96 bpm in 3/4 with both instruments."""
    song = write_song(tmp_path / "duo.mid", bpm=96, parts={40: 12, 42: -12})
    done = continue_midi(song, program_model, tmp_path / "out", ENCODE, GENERATE, bars=2, seed=1)
    assert done.program is None  # each note's own
    tempos, meters, programs = style_of(tmp_path / "out" / "prompt.mid")
    assert (tempos, meters, programs) == ([96.0], [(3, 4)], {40, 42})
    tempos, meters, programs = style_of(tmp_path / "out" / "continued.mid")
    assert (tempos, meters) == ([96.0], [(3, 4)]) and {40, 42} <= programs
