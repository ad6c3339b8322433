"""Audio and piano-roll images of quantized notes, so that samples can be heard and seen.

Audio is rendered with the General MIDI soundfont that pretty_midi ships (TimGM6mb.sf2) by
midirenderer (a self-contained Rust synthesizer wheel: `pip install` is all it needs). Where
either is missing, `render_audio` says why instead of failing, so a report can still be built.
"""

from __future__ import annotations

import functools
import io
import wave
from importlib import util
from pathlib import Path

import matplotlib
import numpy as np
import symusic
from matplotlib.figure import Figure

from midigen.atomic import atomic_file
from midigen.midi.files import Notes

PEAK = 0.9  # peak level of rendered audio (of full scale): loud enough, never clipping
SILENCE_S = 1.0  # length of the WAV written for a MIDI file without notes
PROGRAM_COLORS = "tab10"


@functools.cache
def _soundfont() -> bytes | str:
    """The General MIDI soundfont's bytes, or why there is none (read once per process)."""
    spec = util.find_spec("pretty_midi")
    if spec is None or spec.origin is None:
        return "no General MIDI soundfont (pip install pretty_midi, which ships TimGM6mb.sf2)"
    path = Path(spec.origin).parent / "TimGM6mb.sf2"
    if not path.is_file():
        return f"no General MIDI soundfont: {path} is missing"
    return path.read_bytes()


def render_audio(midi: bytes, out: Path, sample_rate: int = 22050) -> str | None:
    """Write `midi` as a mono 16-bit WAV at `sample_rate`, atomically.

    Returns None on success, or a one-line reason when no renderer is available (then no
    file is written and the caller records the reason).
    """
    try:
        import midirenderer
    except ImportError:
        return "no synthesizer installed (pip install midirenderer)"
    soundfont = _soundfont()
    if isinstance(soundfont, str):
        return soundfont
    if symusic.Score.from_midi(midi).note_num() == 0:
        # The synthesizer cannot measure a song without notes; an empty song is silence.
        samples, source_rate = np.zeros(int(SILENCE_S * sample_rate)), sample_rate
    else:
        samples, source_rate = _read_wav(midirenderer.render_wave_from(soundfont, midi))
    _write_wav(out, _resample(samples, source_rate, sample_rate), sample_rate)
    return None


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM WAV bytes -> (mono float samples, sample rate)."""
    with wave.open(io.BytesIO(data)) as wav:
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        channels, rate = wav.getnchannels(), wav.getframerate()
    return frames.reshape(-1, channels).mean(axis=1) / 32768.0, rate


def _resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling by truncating (or padding) the spectrum of the whole signal."""
    if source_rate == target_rate or len(samples) == 0:
        return samples
    n_out = max(1, round(len(samples) * target_rate / source_rate))
    spectrum = np.fft.rfft(samples)[: n_out // 2 + 1]
    return np.fft.irfft(spectrum, n_out) * (n_out / len(samples))


def _write_wav(out: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Peak-normalized mono 16-bit PCM, so that every sample plays at the same level."""
    peak = float(np.abs(samples).max()) if len(samples) else 0.0
    if peak > 0:
        samples = samples * (PEAK / peak)
    pcm = np.round(samples * 32767).astype("<i2")
    with atomic_file(out, "wb") as f, wave.open(f, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm.tobytes())


def piano_roll(
    notes: Notes,
    out: Path,
    steps_per_beat: int,
    title: str = "",
    prompt_steps: int | None = None,
) -> None:
    """Write a PNG of the notes (time in beats across, pitch up), atomically.

    Where `prompt_steps` is given, the prompt is shaded and a dashed line marks where the
    continuation starts. The title is drawn as plain text (MIDI names may contain `$`).
    """
    fig = Figure(figsize=(10, 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    beats = notes.onset / steps_per_beat
    colors = matplotlib.colormaps[PROGRAM_COLORS](notes.program % 10) if len(notes) else None
    ax.barh(
        notes.pitch,
        notes.duration / steps_per_beat,
        left=beats,
        height=0.8,
        color=colors,
        edgecolor="none",
    )
    end_beats = max(notes.end, prompt_steps or 0, 1) / steps_per_beat
    ax.set_xlim(0, end_beats)
    if len(notes):
        ax.set_ylim(notes.pitch.min() - 2, notes.pitch.max() + 2)
    else:
        ax.text(0.5, 0.5, "no notes", transform=ax.transAxes, ha="center", va="center")
    if prompt_steps is not None:
        boundary = prompt_steps / steps_per_beat
        ax.axvspan(0, boundary, color="0.92", zorder=0)
        ax.axvline(boundary, color="crimson", linestyle="--", linewidth=1.5)
        label_at = ax.get_xaxis_transform()  # x in data (beats), y in axes fractions
        ax.text(boundary, 1.0, " continuation", transform=label_at, color="crimson", va="top")
    ax.set_xlabel("beats")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title, parse_math=False, loc="left", fontsize=10)
    with atomic_file(out, "wb") as f:
        fig.savefig(f, format="png")
