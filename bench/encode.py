"""Throughput of the encode stage against MidiTok's REMI tokenizer, same files, same run.

    python bench/encode.py                        # all Bach chorales (rendered once, cached)
    python bench/encode.py --files 100            # the first 100 chorales
    python bench/encode.py --dir path/to/midi     # any folder of MIDI files instead
    python bench/encode.py --results bench/RESULTS.md   # also write the results file

Both sides run in this one process, one file at a time, from the path on disk:
  midigen  read the bytes + corpus.encode_bytes (parse, quantize, sparse -> position ->
           index score, bar positions): the whole per-file work of the encode stage;
  miditok  REMI(config).encode(path) (parse, preprocess, tokenize, ids), configured to the
           same work (the headline): midigen's grid (steps_per_beat positions per beat,
           durations up to max_duration), no velocity, all tracks in one stream (Program tokens
           only where the program changes), duplicate notes removed, time signatures read;
           and at MidiTok's defaults (velocity, 8 positions per beat, a stream per track) for
           information.
  schemes  the same per-file work in the codebook and events schemes (src/midigen/encodings/),
           and the index score with learned merges applied (encodings/bpe.py),
           for issue 13's target (each scheme >= 2x MidiTok REMI).
Each side gets one warm-up pass, then the best of `--repeats` timed passes. Notes/s counts
the notes symusic finds in the input files (all tracks), the same number for both sides.
Optionally (default on) the full encode_chunk stage with its process pool, for information.
The target: midigen files/s >= 1.0x MidiTok's, like for like.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import symusic
from sections import commit, write_section

from midigen.data.corpus import EncodeConfig, encode_bytes, encode_chunk
from midigen.encodings import Scheme, remi
from midigen.encodings.bpe import BPE
from midigen.encodings.catalog import scheme_for
from midigen.encodings.index import Index
from midigen.midi.files import SkipSong
from midigen.params import load_params, validate_params

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / "out" / "chorales"


# ---- the files -------------------------------------------------------------------------------


def chorale_ids() -> list[str]:
    from music21 import corpus  # slow import, only needed to render the cache

    ids = [str(i) for i in corpus.chorales.Iterator(returnType="filename")]
    return list(dict.fromkeys(ids))  # the iterator repeats a few chorales


def cache_name(corpus_id: str) -> str:
    """A file name for a music21 corpus id (e.g. 'bach/bwv1.6' -> 'bach_bwv1.6.mid')."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", corpus_id) + ".mid"


def render_chorale(corpus_id: str) -> tuple[str, bytes | None]:
    """One chorale as MIDI bytes, or None when music21 cannot render it."""
    from music21 import corpus
    from music21.midi.translate import streamToMidiFile

    try:
        return corpus_id, streamToMidiFile(corpus.parse(corpus_id)).writestr()
    except Exception:  # music21 raises many types; a chorale it cannot render is left out
        return corpus_id, None


def chorale_files(limit: int | None) -> list[Path]:
    """The first `limit` chorales as MIDI files, rendered once into bench/out/chorales."""
    ids = chorale_ids()[:limit]
    CACHE.mkdir(parents=True, exist_ok=True)
    missing = [
        i
        for i in ids
        if not (CACHE / cache_name(i)).exists()
        and not (CACHE / (cache_name(i) + ".failed")).exists()
    ]
    if missing:
        print(f"rendering {len(missing)} chorales into {CACHE} (once) ...", file=sys.stderr)
        with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
            for corpus_id, data in pool.map(render_chorale, missing, chunksize=4):
                name = cache_name(corpus_id)
                if data is None:  # remembered, so that later runs do not retry it
                    (CACHE / (name + ".failed")).touch()
                else:
                    (CACHE / name).write_bytes(data)
    found = [CACHE / cache_name(i) for i in ids if (CACHE / cache_name(i)).exists()]
    if len(found) < len(ids):
        print(f"{len(ids) - len(found)} chorale(s) music21 cannot render left out", file=sys.stderr)
    return found


def folder_files(folder: Path, limit: int | None) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    return paths[:limit]


def input_notes(paths: list[Path]) -> int:
    """Notes in the files as symusic parses them (all tracks), unreadable files count 0."""
    total = 0
    for path in paths:
        with contextlib.suppress(Exception):  # a corrupt file simply has no notes to count
            total += sum(len(t.notes) for t in symusic.Score(path).tracks)
    return total


# ---- the encoders --------------------------------------------------------------------------------


def per_file(work: Callable[[bytes], object]) -> Callable[[list[Path]], int]:
    """A pass that does `work` on each file's bytes; returns the files it skipped."""

    def run(paths: list[Path]) -> int:
        skipped = 0
        for path in paths:
            try:
                work(path.read_bytes())
            except SkipSong:
                skipped += 1
        return skipped

    return run


def midigen_pass(config: EncodeConfig) -> Callable[[list[Path]], int]:
    """One pass of the encode stage's per-file work."""
    return per_file(lambda data: encode_bytes(data, config))


def scheme_pass(config: EncodeConfig, scheme: Scheme) -> Callable[[list[Path]], int]:
    """The same per-file work in another scheme: parse, quantize, rows, bar positions."""

    def work(data: bytes) -> None:
        song = config.read(data)
        song.meter.bar_position(scheme.encode(song.notes, song.pedals).times)

    return per_file(work)


def bpe_pass(config: EncodeConfig, paths: list[Path], merges: int) -> Callable[[list[Path]], int]:
    """The encode stage's per-file work, then the learned merges applied (issue 13); the
    merges are learned once, untimed, from the index tokens of the first 80% of the files."""
    index = Index(config.vocab)
    training = []
    for path in paths[: max(1, len(paths) * 4 // 5)]:
        with contextlib.suppress(SkipSong):
            training.append(encode_bytes(path.read_bytes(), config).tokens)
    bpe = BPE.train(index, training, merges)

    def work(data: bytes) -> None:
        song = encode_bytes(data, config)
        bpe.merge(song.tokens, song.times)

    return per_file(work)


def like_for_like(config: EncodeConfig) -> dict:
    """MidiTok's REMI doing midigen's work, reading time signatures as the encode stage does."""
    return remi.like_for_like(config.steps_per_beat, config.max_duration, time_signatures=True)


def miditok_pass(**arguments) -> Callable[[list[Path]], int]:
    """One pass of MidiTok REMI(TokenizerConfig(**arguments)); returns the failures."""
    from miditok import REMI, TokenizerConfig

    tokenizer = REMI(TokenizerConfig(**arguments))

    def run(paths: list[Path]) -> int:
        failed = 0
        for path in paths:
            try:
                tokenizer.encode(path)
            except Exception:  # MidiTok raises on files it cannot read; count, go on
                failed += 1
        return failed

    return run


@dataclass(frozen=True)
class Timing:
    name: str
    seconds: float  # best pass
    files: int
    notes: int
    skipped: int

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds

    @property
    def notes_per_s(self) -> float:
        return self.notes / self.seconds


def best_of(
    name: str, run: Callable[[list[Path]], int], paths: list[Path], notes: int, repeats: int
) -> Timing:
    """One warm-up pass, then the fastest of `repeats` timed passes."""
    skipped = run(paths)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(paths)
        times.append(time.perf_counter() - start)
    return Timing(name, min(times), len(paths), notes, skipped)


def chunk_stage(paths: list[Path], config: EncodeConfig, notes: int, repeats: int) -> Timing:
    """The whole encode_chunk stage (process pool, all cores) over a dir-source download."""
    from midigen.data.download import download

    with tempfile.TemporaryDirectory(dir=BENCH / "out") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for i, path in enumerate(paths):  # only the chosen files, named in order
            shutil.copyfile(path, src / f"{i:05d}_{path.name}")  # links out are refused
        raw = Path(tmp) / "raw"
        download(
            validate_params({"download": {"source": "dir", "dir": str(src)}}, partial=True)[
                "download"
            ],
            raw,
        )
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            line = encode_chunk(raw, 0, 1, config, Path(tmp) / "chunk", workers=0)
            times.append(time.perf_counter() - start)
    skipped = int(re.search(r"(\d+) skipped", line).group(1))
    return Timing("midigen encode_chunk (pool)", min(times), len(paths), notes, skipped)


# ---- report ------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {cpu}; "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def versions() -> str:
    packages = ("midigen", "miditok", "symusic", "numpy")
    return ", ".join(f"{p} {metadata.version(p)}" for p in packages)


def table(timings: list[Timing]) -> str:
    rows = [
        "| encoder | files | seconds (best) | files/s | notes/s | skipped |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows += [
        f"| {t.name} | {t.files} | {t.seconds:.3f} | {t.files_per_s:,.1f} | "
        f"{t.notes_per_s:,.0f} | {t.skipped} |"
        for t in timings
    ]
    return "\n".join(rows)


def results_markdown(
    timings: list[Timing], corpus: str, command: str, config: EncodeConfig, encode: dict
) -> str:
    ratio = timings[0].files_per_s / timings[1].files_per_s
    default_ratio = timings[0].files_per_s / timings[2].files_per_s
    codebook_ratio = timings[3].files_per_s / timings[1].files_per_s
    events_ratio = timings[4].files_per_s / timings[1].files_per_s
    bpe_ratio = timings[5].files_per_s / timings[1].files_per_s
    verdict = "meets" if ratio >= 1.0 else "MISSES"
    return f"""# Encode benchmark: midigen vs MidiTok REMI

Measured by `bench/encode.py` on {datetime.date.today().isoformat()}, commit {commit()}.

- command: `{command}`
- machine: {machine()}
- packages: {versions()}
- corpus: {corpus}
- midigen config: steps_per_beat {config.steps_per_beat}, max_duration {config.max_duration}, \
instruments {"program" if config.instruments else "merge"} (from params.yaml)
- MidiTok like for like: `REMI(TokenizerConfig(**{like_for_like(config)}))`
- method: one process, one file at a time from its path; one warm-up pass, best of the timed
  passes. midigen = read bytes + `encode_bytes`; MidiTok = `REMI(config).encode(path)`.
  Notes/s counts the notes symusic finds in the input files, the same count for both.

{table(timings)}

**midigen / MidiTok REMI like for like, files/s: {ratio:.2f}x** ({verdict} the >= 1.0x target;
notes/s gives the same ratio, both sides counting the same input notes).
midigen / MidiTok REMI at its defaults (more work: velocities, 8 positions per beat, one
stream per track): {default_ratio:.2f}x, for information.
Each scheme of issue 13 (target >= 2x MidiTok REMI like for like, its params from
params.yaml): codebook (MusicBox; `encode.codebook` {encode["codebook"]}) {codebook_ratio:.2f}x;
events (`encode.events` {encode["events"]}) {events_ratio:.2f}x; index + BPE
(`encode.bpe` {encode["bpe"]}) {bpe_ratio:.2f}x.

The encode_chunk row is the whole stage on all cores: manifest, process pool start-up,
workers encoding, arrays and CSVs written; it is there for information, not for the ratio.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=None, help="use only the first N files")
    parser.add_argument("--dir", type=Path, default=None, help="bench this MIDI folder instead")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (best is kept)")
    parser.add_argument("--no-chunk", action="store_true", help="skip the encode_chunk timing")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--results", type=Path, default=None, help="write a markdown report")
    args = parser.parse_args(argv)

    encode = load_params(args.params)["encode"]
    config = EncodeConfig.from_params(encode)
    schemes = [scheme_for(name, encode) for name in ("codebook", "events")]
    if args.dir:
        paths, corpus = folder_files(args.dir, args.files), f"MIDI files under {args.dir}"
    else:
        paths = chorale_files(args.files)
        corpus = (
            f"{len(paths)} Bach chorales from music21 rendered to MIDI (distinct ids of "
            "corpus.chorales.Iterator; any that music21 cannot render are left out)"
        )
    if not paths:
        sys.exit("no MIDI files to bench")
    notes = input_notes(paths)
    print(f"{len(paths)} files, {notes:,} notes; {args.repeats} timed passes each", file=sys.stderr)

    timings = [
        best_of("midigen encode_bytes", midigen_pass(config), paths, notes, args.repeats),
        best_of(
            "MidiTok REMI, like for like",
            miditok_pass(**like_for_like(config)),
            paths,
            notes,
            args.repeats,
        ),
        best_of("MidiTok REMI, defaults", miditok_pass(), paths, notes, args.repeats),
        *(
            best_of(f"midigen {scheme.name} scheme", scheme_pass(config, scheme), paths, notes, r)
            for scheme, r in zip(schemes, (args.repeats,) * 2, strict=True)
        ),
        best_of(
            f"midigen index + BPE ({encode['bpe']['merges']} merges)",
            bpe_pass(config, paths, encode["bpe"]["merges"]),
            paths,
            notes,
            args.repeats,
        ),
    ]
    if not args.no_chunk:
        timings.append(chunk_stage(paths, config, notes, args.repeats))

    print(table(timings))
    ratio = timings[0].files_per_s / timings[1].files_per_s
    print(f"\nmidigen / MidiTok like for like, files/s: {ratio:.2f}x (target >= 1.0x)")
    if args.results:
        command = "python " + shlex.join(["bench/encode.py", *(argv or sys.argv[1:])])
        markdown = results_markdown(timings, corpus, command, config, encode)
        write_section(args.results, "encode", markdown)
        print(f"wrote {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
