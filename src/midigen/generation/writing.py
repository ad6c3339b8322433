"""The generate stage's work: continue the first test songs and write each prompt, real
continuation and generated one as MIDI, WAV and piano roll, with samples.json."""

from __future__ import annotations

import time
from pathlib import Path

import mido
import numpy as np
from torch import nn

from midigen.atomic import atomic_dir
from midigen.data.corpus import load_shard
from midigen.data.download import read_manifest
from midigen.encodings import decode_song, whole_rows
from midigen.encodings.catalog import load_scheme
from midigen.errors import MidigenError
from midigen.generation.media import piano_roll, render_audio
from midigen.generation.prompts import split_song
from midigen.generation.samples import PIECES, PieceFiles, SamplePrompt, Samples
from midigen.generation.sampling import GenerateConfig, generate_batch
from midigen.midi.files import Meter, Notes, write_midi


def song_title(midi_file: Path | None, fallback: str) -> str:
    """The piece's name: the name of a first track that plays no note (a type-1 file's
    conductor track names the sequence), else `fallback` (the source's name). A first track
    with notes is named after its part ("Soprano"), which does not tell pieces apart."""
    if midi_file is None:
        return fallback
    try:
        first = mido.MidiFile(midi_file, clip=True).tracks[0]
    except Exception:  # the file was encoded once, but a title is not worth failing over
        return fallback
    names = [m.name.strip() for m in first if m.type == "track_name" and m.name.strip()]
    if not names or any(m.type == "note_on" for m in first):
        return fallback
    return names[0]


def write_samples(
    model: nn.Module,
    variant: str,
    shards: Path,
    raw: Path,
    out: Path,
    config: GenerateConfig,
    steps_per_beat: int,
) -> Samples:
    """Continue the first `config.prompts` test songs, in one batch; write OUT/ (MIDI, WAV and
    piano roll of prompt, real and generated piece, and samples.json) atomically; return what
    it records."""
    scheme, shard = load_scheme(shards), load_shard(shards, "test")
    grammar = scheme.grammar
    if config.prompts > len(shard.songs):
        raise MidigenError(
            f"generate.prompts is {config.prompts} but the test split has only "
            f"{len(shard.songs)} songs (lower generate.prompts)"
        )
    files = {row["sha256"]: raw / row["path"] for row in read_manifest(raw / "manifest.csv")}
    cuts = []  # (prompt, real continuation, the song's step of every token) per test song
    for k in range(config.prompts):
        span = shard.song(k)
        times = np.asarray(shard.times[span])
        tokens, bar_pos = np.asarray(shard.tokens[span], np.int64), np.asarray(shard.bar_pos[span])
        cut = split_song(tokens, times, bar_pos, config.prompt_bars, steps_per_beat, grammar)
        cuts.append((*cut, times))
    started = time.perf_counter()
    generations = generate_batch(model, [prompt for prompt, _, _ in cuts], scheme, config)
    seconds = time.perf_counter() - started
    prompts, renderer = [], None
    with atomic_dir(out) as tmp:
        for k, ((prompt, real, times), generation) in enumerate(
            zip(cuts, generations, strict=True)
        ):
            song = shard.songs[k]
            head = prompt.tokens.tolist()  # ints, or rows of them (codebook)
            tokens = {
                "prompt": head,
                "real": real.tolist(),
                "generated": whole_rows(grammar, prompt.cursor, generation.tokens),
            }
            title = song_title(files.get(song["sha256"]), song["source"])
            heading = song["source"] if title == song["source"] else f"{title} ({song['source']})"
            piece_files = {}
            for piece in PIECES:
                body = [] if piece == "prompt" else tokens[piece]
                continuation = None if piece == "prompt" else int(times[len(head)])
                piece_files[piece], reason = write_piece(
                    tmp / f"{k:02d}_{piece}",
                    decode_song(scheme, [*head, *body]),
                    f"{heading}: {piece}",
                    Meter.constant(prompt.bar_steps),
                    continuation,
                    config.sample_rate,
                    steps_per_beat,
                )
                renderer = renderer or reason
            prompts.append(
                SamplePrompt(
                    id=f"{k:02d}",
                    song=song["sha256"],
                    source=song["source"],
                    title=title,
                    prompt_steps=int(times[len(head)]),
                    bar_steps=prompt.bar_steps,
                    tokens=tokens,
                    files=piece_files,
                )
            )
        drawn = sum(len(generation.tokens) for generation in generations)
        samples = Samples(
            variant,
            scheme.name,
            renderer,
            steps_per_beat,
            seconds,
            drawn / seconds,
            config.length,
            tuple(prompts),
        )
        samples.write(tmp)
    return samples


def write_piece(
    stem: Path,
    notes: Notes,
    heading: str,
    meter: Meter,
    continuation: int | None,
    sample_rate: int,
    steps_per_beat: int,
    tempos: np.ndarray | None = None,
) -> tuple[PieceFiles, str | None]:
    """One piece as STEM.mid, .wav and .png (the piano roll, the continuation marked where it
    starts): its file names, and why there is no WAV, if not. `tempos`: its tempo map
    (`midi.tempo_map`; none: MIDI's 120 bpm)."""
    midi = write_midi(notes, steps_per_beat, meter, tempos)
    stem.with_suffix(".mid").write_bytes(midi)
    reason = render_audio(midi, stem.with_suffix(".wav"), sample_rate)
    piano_roll(notes, stem.with_suffix(".png"), steps_per_beat, heading, continuation)
    wav = None if reason else f"{stem.name}.wav"
    return PieceFiles(f"{stem.name}.mid", f"{stem.name}.png", wav), reason
