"""Continue any MIDI file with a trained model: the file read and encoded exactly as the
encode stage reads the corpus (the model's own scheme and grid), its opening bars as the
prompt, and the continuation written as MIDI, WAV and piano roll beside the prompt's.

The song comes back as the user wrote it: its tempo map and time signatures (as they stand
where the continuation starts), and its instruments: a model of `instruments: program` plays
each note's own; one that merged them plays the song's most common program, and says so."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from midigen.atomic import atomic_dir
from midigen.data.corpus import EncodeConfig
from midigen.encodings import Scheme, decode_song, whole_rows
from midigen.encodings.catalog import SCHEME_FILE, load_scheme, scheme_record
from midigen.errors import MidigenError
from midigen.generation.prompts import Prompt, split_song
from midigen.generation.samples import PieceFiles
from midigen.generation.sampling import GenerateConfig, generate
from midigen.generation.writing import write_piece
from midigen.midi.files import Meter, SkipSong, Song, read_capped
from midigen.models.variants import load_trained

WHOLE_SONG = 10**9  # bars: more than any file holds, so the prompt is the whole file


@dataclass(frozen=True)
class Continuation:
    """What `continue_midi` wrote: the prompt alone and the prompt with its continuation."""

    out: Path
    prompt: PieceFiles
    continued: PieceFiles
    prompt_notes: int
    generated_tokens: int
    seconds: float
    renderer: str | None  # why there is no audio, if there is none
    program: int | None  # the program merged instruments were written in (None: their own)


def continue_midi(
    midi: Path,
    model_dir: Path,
    out: Path,
    encode: dict,
    generate_params: dict,
    bars: int | None = None,
    seed: int | None = None,
) -> Continuation:
    """Continue the first `bars` bars of `midi` (default: all of it) with the model in
    `model_dir` (model.pt and the scheme.json training wrote beside it); write OUT/prompt.* and
    OUT/continued.* atomically. `encode`: the encode params (the file limits; the grid comes
    from the model's scheme); `generate_params`: the generate params (length, sampling)."""
    scheme, grid = _model_scheme(Path(model_dir))
    config = EncodeConfig.from_params({**encode, **grid}, scheme.name)
    song = _read(Path(midi), config)  # a bad file is refused before the model is loaded
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_trained(Path(model_dir) / "model.pt", scheme.fields, device)
    prompt = _prompt(song, scheme, bars or WHOLE_SONG, config.steps_per_beat)
    generation_config = GenerateConfig.from_params(generate_params)
    started = time.perf_counter()
    drawn = generate(model, prompt, scheme, generation_config, seed=seed).tokens
    seconds = time.perf_counter() - started
    head = prompt.tokens.tolist()
    kept = whole_rows(scheme.grammar, prompt.cursor, drawn)
    starts = scheme.grammar.sounds_at(prompt.cursor, kept[0]) if kept else None
    meter, tempos = _held_at(song, starts)
    program = None if config.instruments else song.program
    pieces, notes, renderer = {}, {}, None
    with atomic_dir(out) as tmp:
        for name, body in (("prompt", []), ("continued", kept)):
            notes[name] = decode_song(scheme, [*head, *body])
            if program is not None:
                notes[name] = replace(notes[name], program=np.full_like(notes[name].pitch, program))
            pieces[name], reason = write_piece(
                tmp / name,
                notes[name],
                f"{Path(midi).stem}: {name}",
                meter,
                None if name == "prompt" else starts,
                generation_config.sample_rate,
                config.steps_per_beat,
                tempos,
            )
            renderer = renderer or reason
    return Continuation(
        Path(out),
        pieces["prompt"],
        pieces["continued"],
        len(notes["prompt"]),
        len(kept),
        seconds,
        renderer,
        program,
    )


def _held_at(song: Song, step: int | None) -> tuple[Meter, np.ndarray]:
    """The song's meter and tempo map as far as they are set before `step` (where the
    continuation starts; None: all of it): a change later in the song is not the prompt's."""
    end = np.inf if step is None else step
    bars = song.meter.start < end  # its first bar starts at 0
    meter = Meter(song.meter.start[bars], song.meter.length[bars])
    return meter, song.tempos[song.tempos[:, 0] < end]


def _model_scheme(model_dir: Path) -> tuple[Scheme, dict]:
    """The scheme the model was trained on and its grid keys, from beside model.pt."""
    if not (model_dir / SCHEME_FILE).exists():
        raise MidigenError(
            f"{model_dir}: no {SCHEME_FILE} beside the model (give the folder `midigen train` "
            "wrote, e.g. models/index/xl_knn; models trained before it recorded its scheme: "
            "train again)"
        )
    record = scheme_record(model_dir)
    grid = {k: v for k, v in record["encode"].items() if k != record["scheme"]}
    return load_scheme(model_dir), grid


def _read(midi: Path, config: EncodeConfig) -> Song:
    """The file's quantized notes as the encode stage reads them; one clear error if it cannot."""
    try:
        data = read_capped(midi, config.limits.max_file_bytes)
    except SkipSong as skip:
        raise MidigenError(f"{midi}: cannot be read ({skip.detail})") from None
    try:
        return config.read(data)
    except SkipSong as skip:
        raise MidigenError(f"{midi}: not a MIDI file midigen can continue ({skip})") from None


def _prompt(song: Song, scheme: Scheme, bars: int, steps_per_beat: int) -> Prompt:
    encoded = scheme.encode(song.notes, song.pedals)
    tokens = encoded.stored
    bar_pos = song.meter.bar_position(encoded.times)
    prompt, _ = split_song(tokens, encoded.times, bar_pos, bars, steps_per_beat, scheme.grammar)
    return prompt
