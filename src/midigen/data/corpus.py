"""Encode a corpus in chunks, in parallel, and gather the chunks into per-split shards.

A chunk is the set of manifest files whose content hash falls in it, so the DAG can run
chunks as separate jobs (or on separate machines) and the result does not depend on how
many there are. A file that cannot be encoded is listed in the chunk's errors.csv with its
reason; it never stops the stage.
"""

from __future__ import annotations

import collections
import csv
import functools
import json
import logging
import math
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm import tqdm

from midigen.atomic import atomic_dir
from midigen.data.download import read_manifest, write_csv
from midigen.data.midi import (
    DROPPED,
    FILE_REPAIRS,
    NOTE_CHANGES,
    Limits,
    SkipSong,
    Song,
    read_song,
    write_midi,
)
from midigen.encodings import Scheme
from midigen.encodings.bpe import BPE
from midigen.encodings.catalog import SCHEME_FILE, merges_of, scheme_for, write_scheme
from midigen.encodings.scores import Vocab, decode_tokens, encode_notes
from midigen.errors import MidigenError, read_json

SPLITS = ("train", "val", "test")
ARRAYS = {"tokens": np.uint16, "times": np.int32, "bar_pos": np.int32}
SONG_FIELDS = (
    *("sha256", "split", "source", "notes", "tokens", "steps", "notes_read"),
    *NOTE_CHANGES,
    *FILE_REPAIRS,
)
SCHEME_PREFIX = "scheme_"  # songs.csv columns of what the scheme changed (Scheme.changes)
ERROR_FIELDS = ("path", "source", "reason", "detail")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeConfig:
    """What the encoding of one file depends on (the `encode` params, less the job layout)."""

    steps_per_beat: int
    max_duration: int
    instruments: bool
    limits: Limits
    scheme_name: str = "index"  # one of catalog.SCHEMES
    scheme_section: dict = field(default_factory=dict)  # its params (encode.<scheme>)

    @classmethod
    def from_params(cls, encode: dict, scheme: str = "index") -> EncodeConfig:
        limits = Limits(
            max_file_bytes=int(encode["max_file_mb"] * 2**20),
            max_notes=encode["max_notes"],
            max_steps=encode["max_steps"],
        )
        return cls(
            steps_per_beat=encode["steps_per_beat"],
            max_duration=encode["max_duration"],
            instruments=encode["instruments"] == "program",
            limits=limits,
            scheme_name=scheme,
            scheme_section=encode.get(scheme, {}),
        )

    @property
    def scheme_params(self) -> dict:
        """The params the scheme is made from: the grid keys and its own section."""
        grid = {
            "steps_per_beat": self.steps_per_beat,
            "max_duration": self.max_duration,
            "instruments": "program" if self.instruments else "merge",
        }
        return {**grid, self.scheme_name: self.scheme_section}

    @cached_property
    def scheme(self) -> Scheme:
        """The rows a song becomes (bpe: the index score its merges are learned on)."""
        return scheme_for(self.scheme_name, self.scheme_params)

    @property
    def vocab(self) -> Vocab:
        return Vocab(self.max_duration, self.instruments)

    def read(self, data: bytes) -> Song:
        return read_song(
            data, self.steps_per_beat, self.max_duration, not self.instruments, self.limits
        )


@dataclass(frozen=True)
class EncodedSong:
    tokens: np.ndarray
    times: np.ndarray
    bar_pos: np.ndarray
    notes: int
    notes_read: int
    changes: dict[str, int]  # notes dropped or changed, by cause (midi.NOTE_CHANGES)
    repairs: dict[str, int]  # how a file that broke a rule was read (midi.FILE_REPAIRS)
    scheme_changes: dict[str, int]  # what the scheme changed in the quantized notes, by cause


def encode_bytes(data: bytes, config: EncodeConfig) -> EncodedSong:
    """One MIDI file -> the scheme's rows with their steps and bar positions (raises
    SkipSong)."""
    song = config.read(data)
    encoded = config.scheme.encode(song.notes, song.pedals)
    tokens = encoded.stored
    return EncodedSong(
        tokens,
        encoded.times,
        song.meter.bar_position(encoded.times),
        len(song.notes),
        song.notes_read,
        song.changes,
        song.repairs,
        config.scheme.changes(song.notes, song.pedals, encoded),
    )


def _on_file(fn, task: tuple[Path, EncodeConfig]):
    """fn(file bytes, config), or the SkipSong saying why the file cannot be encoded."""
    path, config = task
    try:
        return fn(_read_capped(path, config.limits.max_file_bytes), config)
    except SkipSong as skip:
        return skip


def _read_capped(path: Path, max_bytes: int) -> bytes:
    """Read a file, but never more than max_bytes + 1 bytes (the size check sees the excess)."""
    with open(path, "rb") as f:
        return f.read(max_bytes + 1)


def parallel_map(fn, tasks: list, workers: int, desc: str) -> Iterator:
    """fn over tasks in order, on a process pool when workers > 1, with a progress bar."""
    workers = workers or os.cpu_count() or 1
    bar = dict(total=len(tasks), desc=desc, unit="file", mininterval=1.0, disable=None)
    if workers == 1 or len(tasks) < 2:
        yield from tqdm(map(fn, tasks), **bar)
        return
    chunksize = max(1, min(64, len(tasks) // (workers * 8)))
    with ProcessPoolExecutor(workers) as pool:
        yield from tqdm(pool.map(fn, tasks, chunksize=chunksize), **bar)


def chunk_of(sha256: str, n_chunks: int) -> int:
    """Which encode chunk a file belongs to (hash bits independent of the split's)."""
    return int(sha256[8:16], 16) % n_chunks


def encode_chunk(
    raw_dir: Path, chunk: int, n_chunks: int, config: EncodeConfig, out: Path, workers: int = 0
) -> str:
    """Encode this chunk's files into `out`; return the one-line summary."""
    rows = [
        r
        for r in read_manifest(raw_dir / "manifest.csv")
        if chunk_of(r["sha256"], n_chunks) == chunk
    ]
    tasks = [(raw_dir / r["path"], config) for r in rows]
    songs, errors = [], []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ARRAYS}
    for row, result in zip(
        rows,
        parallel_map(functools.partial(_on_file, encode_bytes), tasks, workers, f"encode {chunk}"),
        strict=True,
    ):
        if isinstance(result, SkipSong):
            errors.append(
                {
                    "path": row["path"],
                    "source": row["source"],
                    "reason": result.reason,
                    "detail": result.detail,
                }
            )
            continue
        for name in ARRAYS:
            parts[name].append(getattr(result, name))
        songs.append(
            {
                "sha256": row["sha256"],
                "split": row["split"],
                "source": row["source"],
                "notes": result.notes,
                "tokens": len(result.tokens),
                "steps": int(result.times[-1]),
                "notes_read": result.notes_read,
                **result.changes,
                **result.repairs,
                **{f"{SCHEME_PREFIX}{k}": v for k, v in result.scheme_changes.items()},
            }
        )
    with atomic_dir(out) as tmp:
        _save_arrays(tmp, parts, [s["tokens"] for s in songs])
        write_csv(tmp / "songs.csv", song_fields(songs), songs)
        write_csv(tmp / "errors.csv", ERROR_FIELDS, errors)
        write_scheme(tmp, config.scheme_name, config.scheme_params)
    return _summary(f"chunk {chunk}/{n_chunks}", songs, errors)


def song_fields(songs: list[dict]) -> tuple[str, ...]:
    """songs.csv's columns: the fixed ones, then what the scheme changed, by cause."""
    extra = sorted({k for song in songs for k in song if k.startswith(SCHEME_PREFIX)})
    return (*SONG_FIELDS, *extra)


def _save_arrays(
    folder: Path, parts: dict[str, list[np.ndarray]], lengths: list[int]
) -> dict[str, np.ndarray]:
    """Concatenate and save each array; return what was saved."""
    saved = {}
    for name, dtype in ARRAYS.items():
        flat = np.concatenate(parts[name]) if parts[name] else np.zeros(0)
        saved[name] = flat.astype(dtype)
        np.save(folder / f"{name}.npy", saved[name])
    np.save(folder / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    return saved


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _summary(what: str, songs: list[dict], errors: list[dict]) -> str:
    reasons = collections.Counter(e["reason"] for e in errors)
    skipped = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
    notes = sum(int(s["notes"]) for s in songs)
    tokens = sum(int(s["tokens"]) for s in songs)
    return (
        f"{what}: {len(songs)} files ok, {len(errors)} skipped"
        f"{f' ({skipped})' if skipped else ''}, {notes:,} notes, {tokens:,} tokens"
    )


# ---- shards ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """One split: flat arrays (memory-mapped by default) and where each song starts."""

    tokens: np.ndarray
    times: np.ndarray
    bar_pos: np.ndarray
    offsets: np.ndarray  # song i is [offsets[i], offsets[i + 1])
    songs: list[dict]

    def song(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))


def load_shard(shards_dir: Path, split: str, mmap: bool = True) -> Shard:
    folder = Path(shards_dir) / split
    if not (folder / "tokens.npy").exists():
        raise MidigenError(f"{folder}: no shard here (run the shard stage first)")
    mode = "r" if mmap else None
    arrays = {
        name: np.load(folder / f"{name}.npy", mmap_mode=mode) for name in (*ARRAYS, "offsets")
    }
    return Shard(songs=_read_csv(folder / "songs.csv"), **arrays)


def build_shards(
    chunk_dirs: list[Path], config: EncodeConfig, out: Path, flag_lost_fraction: float
) -> str:
    """Gather encoded chunks into one shard per split, songs ordered by content hash; files
    that lost more than `flag_lost_fraction` of their notes are flagged in stats.json."""
    missing = [str(d) for d in chunk_dirs if not (d / "songs.csv").exists()]
    if missing:
        raise MidigenError(f"encoded chunk not found: {', '.join(missing)} (run encode first)")
    wanted = {"scheme": config.scheme_name, "encode": config.scheme_params}
    for folder in chunk_dirs:
        found = read_json(folder / SCHEME_FILE, f"{folder}: no {SCHEME_FILE} (run encode again)")
        if found != wanted:
            raise MidigenError(
                f"{folder} was encoded as {found['scheme']} with {found['encode']}, not as "
                f"{wanted['scheme']} with {wanted['encode']} (run encode again)"
            )
    songs, errors, arrays = [], [], []
    for folder in chunk_dirs:
        chunk = {name: np.load(folder / f"{name}.npy") for name in (*ARRAYS, "offsets")}
        for i, song in enumerate(_read_csv(folder / "songs.csv")):
            songs.append(song)
            span = slice(chunk["offsets"][i], chunk["offsets"][i + 1])
            arrays.append({name: chunk[name][span] for name in ARRAYS})
        errors += _read_csv(folder / "errors.csv")
    merges = None
    if merges_of(config.scheme_name, config.scheme_params):
        merges = _learn_merges(config, songs, arrays)
        scheme: Scheme = merges
    else:
        scheme = config.scheme

    stats: dict = {
        "scheme": config.scheme_name,
        "vocab_size": list(scheme.fields),
        "steps_per_beat": config.steps_per_beat,
        "skipped": dict(collections.Counter(e["reason"] for e in errors)),
        "notes": note_changes(songs, flag_lost_fraction),
        "scheme_changes": {
            key.removeprefix(SCHEME_PREFIX): sum(int(s[key]) for s in songs)
            for key in song_fields(songs)
            if key.startswith(SCHEME_PREFIX)
        },
        "repairs": {
            repair: {
                "files": sum(int(s[repair]) > 0 for s in songs),
                "count": sum(int(s[repair]) for s in songs),
            }
            for repair in FILE_REPAIRS
        },
        "splits": {},
    }
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            order = sorted((s["sha256"], i) for i, s in enumerate(songs) if s["split"] == split)
            chosen = [i for _, i in order]
            (tmp / split).mkdir()
            tokens = _save_arrays(
                tmp / split,
                {n: [arrays[i][n] for i in chosen] for n in ARRAYS},
                [int(songs[i]["tokens"]) for i in chosen],
            )["tokens"]
            write_csv(tmp / split / "songs.csv", song_fields(songs), [songs[i] for i in chosen])
            stats["splits"][split] = {
                "songs": len(chosen),
                "tokens": int(len(tokens)),
                "notes": sum(int(songs[i]["notes"]) for i in chosen),
                "unigram_entropy_bits": unigram_entropy(tokens, scheme.fields),
            }
        write_csv(tmp / "errors.csv", ERROR_FIELDS, errors)
        write_scheme(tmp, config.scheme_name, config.scheme_params, merges)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    total = sum(s["tokens"] for s in stats["splits"].values())
    per_split = " / ".join(f"{k} {v['songs']}" for k, v in stats["splits"].items())
    notes = stats["notes"]
    return (
        f"{config.scheme_name}: {len(songs)} songs ({per_split}), {total:,} tokens, "
        f"vocab {' x '.join(map(str, scheme.fields))}; "
        f"{notes['dropped']:,} of {notes['read']:,} notes dropped, {notes['changed']:,} changed, "
        f"{len(notes['flagged'])} files flagged -> {out}"
    )


def _learn_merges(config: EncodeConfig, songs: list[dict], arrays: list[dict]) -> BPE:
    """Learn the scheme's merges on the training split's base tokens, then merge every song
    in place (each merged token at its first base token's step and bar position)."""
    training = [a["tokens"] for s, a in zip(songs, arrays, strict=True) if s["split"] == "train"]
    count = merges_of(config.scheme_name, config.scheme_params)
    merges = BPE.train(config.scheme, training, count, config.scheme_name)
    for song, array in zip(songs, arrays, strict=True):
        tokens, first = merges.merged(array["tokens"])
        array.update(tokens=tokens, times=array["times"][first], bar_pos=array["bar_pos"][first])
        song["tokens"] = len(tokens)
    return merges


def note_changes(songs: list[dict], flag_lost_fraction: float) -> dict:
    """What encoding did to the notes of all songs: totals by cause, and the files that lost
    more than `flag_lost_fraction` of theirs (each also a warning in the log)."""
    totals = {cause: sum(int(s[cause]) for s in songs) for cause in NOTE_CHANGES}
    flagged = []
    for song in songs:
        read, lost = int(song["notes_read"]), sum(int(song[cause]) for cause in DROPPED)
        if read and lost / read > flag_lost_fraction:
            flagged.append(
                {"source": song["source"], "sha256": song["sha256"], "read": read, "dropped": lost}
            )
            log.warning(
                "%s: %d of its %d notes dropped (%s)",
                song["source"],
                lost,
                read,
                ", ".join(f"{c} {song[c]}" for c in DROPPED if int(song[c])),
            )
    return {
        "read": sum(int(s["notes_read"]) for s in songs),
        "kept": sum(int(s["notes"]) for s in songs),
        "dropped": sum(totals[c] for c in DROPPED),
        "changed": sum(v for c, v in totals.items() if c not in DROPPED),
        "by_cause": totals,
        "flag_lost_fraction": flag_lost_fraction,
        "flagged": flagged,
    }


def unigram_entropy(tokens: np.ndarray, fields: tuple[int, ...]) -> float:
    """Entropy in bits of the token frequencies (summed over a row's fields): the loss per row
    a model must beat to have learned anything."""
    if not len(tokens):
        return math.nan
    rows = np.asarray(tokens).reshape(len(tokens), -1)
    total = 0.0
    for field_, size in enumerate(fields):
        counts = np.bincount(rows[:, field_], minlength=size).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        total += float(-(p * np.log2(p)).sum())
    return total


# ---- round trip ------------------------------------------------------------------------------


def roundtrip_bytes(data: bytes, config: EncodeConfig) -> bool:
    """tokens -> notes -> MIDI -> notes gives back exactly the quantized notes of `data`."""
    song = config.read(data)
    tokens, _ = encode_notes(song.notes, config.vocab)
    rebuilt = write_midi(decode_tokens(tokens, config.vocab), config.steps_per_beat, song.meter)
    return song.notes.equals(config.read(rebuilt).notes)


def roundtrip_corpus(
    raw_dir: Path, config: EncodeConfig, workers: int = 0
) -> tuple[int, list[str], int]:
    """(files checked, paths that do not round-trip, files skipped) over a whole manifest."""
    rows = read_manifest(raw_dir / "manifest.csv")
    tasks = [(raw_dir / r["path"], config) for r in rows]
    checked, mismatches, skipped = 0, [], 0
    for row, ok in zip(
        rows,
        parallel_map(functools.partial(_on_file, roundtrip_bytes), tasks, workers, "round trip"),
        strict=True,
    ):
        if isinstance(ok, SkipSong):
            skipped += 1
            continue
        checked += 1
        if not ok:
            mismatches.append(row["path"])
    return checked, mismatches, skipped
