"""Lakh-sized data on this machine: synthetic multi-track MIDI files through the real
download -> encode -> shard stages, with files/s, tokens, disk and peak memory of every stage.

    python bench/scale.py --files 10000 --files 40000 --work /tmp/scale
    python bench/scale.py ... --results bench/RESULTS.md   # also write its section there

The Lakh MIDI Dataset (176,581 files) cannot be downloaded here, so `synthesize` writes files
shaped like it: 1 to 24 tracks (a drum track in 4 of 5 songs), General MIDI programs, a
tempo and meter, songs of about 40 to 160 bars, each track playing a role (drums, bass,
chords, melody, pad) at its own note density. Its sizes are reported, not claimed to be
Lakh's. Files are written once into WORK/midi (by index, so a larger run reuses a smaller
one's), and every size runs in its own project WORK/run-N with the default params but
`download.source: dir`, `download.max_files: N`, encode chunks of `--chunk-files` files and
`encode.workers` = the cores. Each stage runs as `midigen STAGE` under GNU time: its wall time
and its peak resident memory (the largest process of the stage: for encode, of every chunk
job and its worker processes). Disk is what each stage's folder holds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import symusic
import yaml
from sections import record

from midigen.params import load_params

TICKS = 480  # per quarter note
ROLES = {  # notes per bar, pitch range, longest note in beats
    "bass": (6, (28, 52), 2),
    "chords": (12, (48, 76), 4),
    "melody": (8, (60, 88), 2),
    "pad": (3, (48, 80), 8),
}
DRUMS = (14, (35, 59), 0.25)


def synthesize(folder: Path, count: int, seed: int = 0) -> int:
    """Files 0..count-1 under FOLDER (1,000 to a subfolder), written once each; how many were
    written now."""
    written = 0
    for index in range(count):
        path = folder / f"{index // 1000:03d}" / f"{index:06d}.mid"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            song = synthetic_song(np.random.default_rng([seed, index]))
            path.write_bytes(song.dumps_midi())
            written += 1
    return written


def synthetic_song(rng: np.random.Generator) -> symusic.Score:
    """One multi-track song: tempo, meter, and per track a role's notes over every bar."""
    score = symusic.Score(TICKS)
    beats = int(rng.choice([4, 3, 6], p=[0.85, 0.1, 0.05]))
    bars = int(np.clip(rng.lognormal(np.log(80), 0.4), 16, 400))
    score.tempos.append(symusic.Tempo(0, qpm=float(rng.uniform(70, 160))))
    score.time_signatures.append(symusic.TimeSignature(0, beats, 4))
    tracks = int(np.clip(rng.poisson(7), 0, 23)) + 1
    if rng.random() < 0.8:
        score.tracks.append(role_track(rng, "drums", DRUMS, bars, beats, drum=True))
        tracks -= 1
    for _ in range(tracks):
        role = str(rng.choice(list(ROLES)))
        score.tracks.append(role_track(rng, role, ROLES[role], bars, beats))
    return score


def role_track(
    rng: np.random.Generator, name: str, role: tuple, bars: int, beats: int, drum: bool = False
) -> symusic.Track:
    """Notes of one track: Poisson-many per bar on an eighth-note grid (sixteenths for drums),
    with rests (a part is silent in a quarter of the bars)."""
    density, (low, high), longest = role
    grid = TICKS // (4 if drum else 2)
    per_bar = rng.poisson(density, bars) * (rng.random(bars) > 0.25)
    starts = np.repeat(np.arange(bars) * beats * TICKS, per_bar)
    slots = beats * TICKS // grid
    time_ = starts + rng.integers(0, slots, len(starts)) * grid
    duration = grid * rng.integers(1, max(2, int(longest * TICKS / grid)) + 1, len(starts))
    pitch = rng.integers(low, high, len(starts))
    velocity = rng.integers(40, 120, len(starts))
    track = symusic.Track(name, 0 if drum else int(rng.integers(0, 112)), drum)
    order = np.argsort(time_, kind="stable")
    track.notes = symusic.Note.from_numpy(
        time_[order].astype(np.int32),
        duration[order].astype(np.int32),
        pitch[order].astype(np.int8),
        velocity[order].astype(np.int8),
    )
    return track


def timed(command: list[str], cwd: Path) -> tuple[float, int]:
    """Run a midigen stage under GNU time: (wall seconds, peak RSS in MiB)."""
    report = cwd / "time.txt"
    subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", "-o", str(report), *command], cwd=cwd, check=True
    )
    seconds, kib = report.read_text().split()[-2:]
    return float(seconds), int(kib) // 1024


def du(folder: Path) -> int:
    """Bytes of the files under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_size(work: Path, count: int, chunk_files: int) -> dict:
    """download -> encode -> shard over the first `count` synthetic files; the numbers."""
    project = work / f"run-{count}"
    project.mkdir(parents=True, exist_ok=True)
    chunks = max(1, round(count / chunk_files))
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params["download"].update(source="dir", dir=str(work / "midi"), max_files=count)
    params["encode"].update(chunks=list(range(chunks)), workers=os.cpu_count())
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    row = {"files": count, "chunks": chunks}
    row["download_s"], row["download_mib"] = timed(["midigen", "download"], project)
    encode_s, encode_mib = 0.0, 0
    for chunk in range(chunks):
        seconds, mib = timed(["midigen", "encode", "--chunk", str(chunk)], project)
        encode_s, encode_mib = encode_s + seconds, max(encode_mib, mib)
    row["encode_s"], row["encode_mib"] = encode_s, encode_mib
    row["shard_s"], row["shard_mib"] = timed(["midigen", "shard"], project)
    stats = json.loads((project / "data/shards/index/stats.json").read_text())
    row["songs"] = sum(split["songs"] for split in stats["splits"].values())
    row["tokens"] = sum(split["tokens"] for split in stats["splits"].values())
    row["notes"] = stats["notes"]["kept"]
    for name, folder in (
        ("raw", "data/raw"),
        ("encoded", "data/encoded"),
        ("shards", "data/shards"),
    ):
        row[f"{name}_bytes"] = du(project / folder)
    return row


def table(rows: list[dict], synthesis: dict) -> str:
    lines = [
        f"synthetic corpus: {synthesis['files']:,} files, {synthesis['mean_kb']:.1f} KB, "
        f"{synthesis['mean_tracks']:.1f} tracks and {synthesis['mean_notes']:,.0f} notes per "
        f"file on average{synthesis['written']}; default "
        f"encode params (index, instruments merged), {os.cpu_count()} cores",
        "",
        "| files | chunks | songs | notes | tokens | download files/s | encode files/s "
        "| shard files/s | peak RSS download | encode | shard | disk raw | encoded | shards |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n = r["files"]
        lines.append(
            f"| {n:,} | {r['chunks']} | {r['songs']:,} | {r['notes']:,} | {r['tokens']:,} | "
            f"{n / r['download_s']:,.0f} | {n / r['encode_s']:,.1f} | {n / r['shard_s']:,.0f} | "
            f"{r['download_mib']:,} MiB | {r['encode_mib']:,} MiB | {r['shard_mib']:,} MiB | "
            f"{r['raw_bytes'] / 2**30:.2f} GiB | {r['encoded_bytes'] / 2**30:.2f} GiB | "
            f"{r['shards_bytes'] / 2**30:.2f} GiB |"
        )
    return "\n".join(lines)


def synthesis_stats(folder: Path, count: int, rate: float | None, sample: int = 500) -> dict:
    """Mean size, tracks and notes of the files (tracks and notes over the first `sample`)."""
    paths = [folder / f"{i // 1000:03d}" / f"{i:06d}.mid" for i in range(count)]
    scores = [symusic.Score(str(p)) for p in paths[:sample]]
    return {
        "files": count,
        "mean_kb": np.mean([p.stat().st_size for p in paths]) / 1000,
        "mean_tracks": np.mean([len(s.tracks) for s in scores]),
        "mean_notes": np.mean([s.note_num() for s in scores]),
        "written": "" if rate is None else f" (written at {rate:,.0f} files/s)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, action="append", required=True, help="a run size")
    parser.add_argument("--work", type=Path, default=Path("/tmp/midigen-scale"))
    parser.add_argument("--chunk-files", type=int, default=2500, help="files per encode job")
    parser.add_argument("--results", type=Path, help="write the table as its section there")
    args = parser.parse_args()
    largest = max(args.files)
    started = time.perf_counter()
    written = synthesize(args.work / "midi", largest)
    rate = written / (time.perf_counter() - started) if written == largest else None
    synthesis = synthesis_stats(args.work / "midi", largest, rate)
    rows = []
    for count in sorted(args.files):
        rows.append(run_size(args.work, count, args.chunk_files))
        print(json.dumps(rows[-1]), flush=True)
    report = table(rows, synthesis)
    print(report)
    if args.results:
        record(args.results, "scale", "# Lakh-sized data", report)


if __name__ == "__main__":
    main()
