"""samples.json, the generate stage's record of its continuations, in one typed form: written by
generate, read (and checked, once, here) by evaluate and the report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from midigen.errors import MidigenError, read_json

SAMPLES_JSON = "samples.json"
PIECES = ("prompt", "real", "generated")  # the opening, the song's own rest, the model's


@dataclass(frozen=True)
class PieceFiles:
    """One piece's files, beside samples.json."""

    mid: str
    png: str
    wav: str | None  # None: no audio (Samples.renderer says why)


@dataclass(frozen=True)
class SamplePrompt:
    """One test song continued: its opening, real and generated continuation."""

    id: str
    song: str  # the sha256 of its MIDI file
    source: str
    title: str
    prompt_steps: int  # where the continuation starts
    bar_steps: int
    tokens: dict[str, list]  # piece -> its tokens (ints, or rows of them)
    files: dict[str, PieceFiles]  # piece -> its files


@dataclass(frozen=True)
class Samples:
    variant: str
    scheme: str
    renderer: str | None  # why there is no audio, or None
    steps_per_beat: int
    seconds: float  # generating every continuation (all prompts in one batch)
    tokens_per_s: float  # generated tokens of all prompts per second
    length: int  # the most tokens a continuation could have (generate.length)
    prompts: tuple[SamplePrompt, ...]

    def write(self, folder: Path) -> None:
        (Path(folder) / SAMPLES_JSON).write_text(json.dumps(asdict(self), indent=1))


TOP = tuple(name for name in Samples.__dataclass_fields__)
PROMPT = tuple(name for name in SamplePrompt.__dataclass_fields__)


def read_samples(folder: Path) -> Samples:
    """FOLDER/samples.json as `midigen generate` wrote it; one message naming the file and
    what it lacks otherwise."""
    path = Path(folder) / SAMPLES_JSON
    data = read_json(path, f"{path}: not found (run midigen generate first)")
    problem = _problem(data)
    if problem:
        raise MidigenError(f"{path}: {problem}")
    prompts = tuple(
        SamplePrompt(
            **{name: p[name] for name in PROMPT if name != "files"},
            files={piece: PieceFiles(**p["files"][piece]) for piece in PIECES},
        )
        for p in data["prompts"]
    )
    return Samples(**{name: data[name] for name in TOP if name != "prompts"}, prompts=prompts)


def _problem(data: Any) -> str | None:
    """What a samples.json lacks, or None."""
    if not isinstance(data, dict) or not set(TOP) <= data.keys():
        return f"not a samples file (needs {', '.join(TOP)})"
    for i, prompt in enumerate(data["prompts"]):
        prompt = prompt if isinstance(prompt, dict) else {}
        missing = [name for name in PROMPT if name not in prompt]
        tokens, files = prompt.get("tokens", {}), prompt.get("files", {})
        missing += [f"tokens.{piece}" for piece in PIECES if piece not in tokens]
        missing += [
            f"files.{piece}.{ext}"
            for piece in PIECES
            for ext in PieceFiles.__dataclass_fields__
            if ext not in files.get(piece, {})
        ]
        if missing:
            return f"prompt {prompt.get('id', i)} has no {', '.join(missing)}"
    return None
