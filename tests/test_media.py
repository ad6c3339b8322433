"""Audio and piano rolls of real chorale notes: valid WAV, real PNG, a reason without a synth."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from midigen.data.corpus import EncodeConfig
from midigen.generation.media import piano_roll, render_audio
from midigen.midi.files import Notes, write_midi
from midigen.params import load_params

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_BEAT = 4
CRIMSON = np.array([220, 20, 60]) / 255  # the prompt/continuation line


@pytest.fixture(scope="module")
def chorale() -> Notes:
    """The notes of a real Bach chorale, as the encoder quantizes them."""
    from music21 import corpus
    from music21.midi.translate import streamToMidiFile

    data = streamToMidiFile(corpus.parse("bach/bwv269")).writestr()
    params = load_params(ROOT / "params.yaml")["encode"]
    return EncodeConfig.from_params({**params, "steps_per_beat": STEPS_PER_BEAT}).read(data).notes


def _first_beats(notes: Notes, beats: int) -> Notes:
    keep = notes.onset < beats * STEPS_PER_BEAT
    return Notes(notes.onset[keep], notes.program[keep], notes.pitch[keep], notes.duration[keep])


@pytest.mark.parametrize("sample_rate", [22050, 16000])
def test_render_audio_writes_a_mono_wav_as_long_as_the_music(chorale, tmp_path, sample_rate):
    notes = _first_beats(chorale, 16)
    out = tmp_path / "chorale.wav"
    assert render_audio(write_midi(notes, STEPS_PER_BEAT), out, sample_rate) is None
    with wave.open(str(out)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (sample_rate, 1, 2)
        seconds = wav.getnframes() / sample_rate
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2") / 32768
    music_seconds = notes.end / STEPS_PER_BEAT * 0.5  # MIDI's default tempo: 120 beats/minute
    assert music_seconds <= seconds <= music_seconds + 3  # plus the release of the last notes
    # Sound all the way through the music (every half second), peak-normalized without clipping.
    half_seconds = frames[: int(music_seconds * sample_rate)].reshape(-1, sample_rate // 2)
    assert (np.sqrt((half_seconds**2).mean(axis=1)) > 0.01).all()
    assert 0.85 <= np.abs(frames).max() <= 0.91
    assert [p.name for p in tmp_path.iterdir()] == ["chorale.wav"]  # no temp file left


def test_render_audio_of_a_song_without_notes_is_silence(tmp_path):
    empty = Notes(*(np.zeros(0, dtype=np.int64) for _ in range(4)))
    out = tmp_path / "empty.wav"
    assert render_audio(write_midi(empty, STEPS_PER_BEAT), out) is None
    with wave.open(str(out)) as wav:
        assert wav.getnframes() > 0
        assert not np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").any()


def test_render_audio_without_a_synthesizer_returns_the_reason(tmp_path):
    """In a fresh interpreter where `import midirenderer` fails, no WAV and a one-line reason."""
    out = tmp_path / "x.wav"
    script = (
        "import sys; sys.modules['midirenderer'] = None  # makes the import raise ImportError\n"
        "from pathlib import Path\n"
        "from midigen.generation.media import render_audio\n"
        f"print(render_audio(b'', Path({str(out)!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "no synthesizer installed (pip install midirenderer)"
    assert not out.exists()


def _crimson_columns(png: Path) -> np.ndarray:
    pixels = imread(png)[:, :, :3]
    return np.flatnonzero((np.abs(pixels - CRIMSON).max(axis=2) < 0.05).sum(axis=0) > 50)


def test_piano_roll_is_a_png_with_the_continuation_marked(chorale, tmp_path):
    marked, plain = tmp_path / "marked.png", tmp_path / "plain.png"
    piano_roll(chorale, marked, STEPS_PER_BEAT, title="bwv269", prompt_steps=16 * STEPS_PER_BEAT)
    piano_roll(chorale, plain, STEPS_PER_BEAT, title="bwv269")
    assert marked.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(marked).shape
    assert (width, height) == (1000, 320)
    # Notes are drawn: a good share of the plot is coloured, neither white nor grey.
    pixels = imread(plain)[:, :, :3]
    assert (pixels.max(axis=2) - pixels.min(axis=2) > 0.3).mean() > 0.02
    # The dashed line stands where beat 16 is, a quarter of the way in (axes start after labels).
    line = _crimson_columns(marked)
    assert len(line) > 0 and len(_crimson_columns(plain)) == 0
    assert 0.15 * width < line.mean() < 0.4 * width


def test_piano_roll_draws_titles_as_plain_text(tmp_path):
    """A MIDI name with `$` would be parsed as maths (and fail) unless drawn as text."""
    notes = Notes(np.array([0, 4]), np.array([0, 0]), np.array([60, 64]), np.array([4, 4]))
    out = tmp_path / "roll.png"
    piano_roll(notes, out, STEPS_PER_BEAT, title=r"costs $5 \frac{ <script>", prompt_steps=4)
    assert imread(out).shape[:2] == (320, 1000)


def test_piano_roll_draws_its_title_above_the_plot(tmp_path):
    """The title is ink above the axes' top edge (the first row dark across most of the
    image): a few hundred dark pixels with it, no more than a tick label's without."""
    notes = Notes(np.array([0, 4]), np.array([0, 0]), np.array([60, 64]), np.array([4, 4]))
    titled, untitled = tmp_path / "titled.png", tmp_path / "untitled.png"
    piano_roll(notes, titled, STEPS_PER_BEAT, title="Wachet auf, BWV 140")
    piano_roll(notes, untitled, STEPS_PER_BEAT)
    ink = []
    for path in (titled, untitled):
        dark = imread(path)[:, :, :3].max(axis=2) < 0.5
        top = int(np.flatnonzero(dark.sum(axis=1) > dark.shape[1] / 2)[0])
        ink.append(int(dark[:top].sum()))
    assert ink[0] > 200 and ink[1] < 50, ink
