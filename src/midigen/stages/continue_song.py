"""Continue your own MIDI file with a trained model: MIDI, WAV and piano roll of the prompt
and of the prompt with the model's continuation.

    midigen continue SONG.mid --model models/index/xl_knn [--bars N --length N --out DIR]

The file is read and encoded as the encode stage reads the corpus, in the model's own scheme
and grid (scheme.json beside model.pt); the encode params give the file limits, the generate
params the sampling. Not a stage of the DAG: a command for musicians.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from midigen.errors import MidigenError
from midigen.generation.continuation import continue_midi


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("midi", type=Path, help="the MIDI file to continue")
    parser.add_argument(
        "--model", type=Path, required=True, help="a trained model's folder (models/SCHEME/V)"
    )
    parser.add_argument("--bars", type=int, help="prompt with its first N bars (default: all)")
    parser.add_argument("--length", type=int, help="most tokens generated (generate.length)")
    parser.add_argument("--seed", type=int, help="sampling seed (default: generate.seed)")
    parser.add_argument("--out", type=Path, help="default: continued/<file name>")


def run(args: argparse.Namespace, params: dict) -> str:
    for name in ("bars", "length"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise MidigenError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    generate = {**params["generate"], **({"length": args.length} if args.length else {})}
    out = args.out or Path("continued") / args.midi.stem
    done = continue_midi(
        args.midi, args.model, out, params["encode"], generate, args.bars, args.seed
    )
    audio = f"no audio: {done.renderer}" if done.renderer else "with audio"
    played = ""
    if done.program is not None:
        played = f", merged instruments written as program {done.program} (the song's most common)"
    return (
        f"{args.midi.name}: {done.prompt_notes} notes of prompt, {done.generated_tokens} tokens "
        f"generated in {done.seconds:.1f} s{played}, {audio} -> {out}"
    )
