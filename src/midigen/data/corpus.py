"""Encode a corpus in chunks, in parallel, and gather the chunks into per-split shards.

A chunk is the set of manifest files whose content hash falls in it, so the DAG can run
chunks as separate jobs (or on separate machines) and the result does not depend on how
many there are. A file that cannot be encoded is listed in the chunk's errors.csv with its
reason; it never stops the stage.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import functools
import heapq
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from midigen.atomic import atomic_dir
from midigen.data.download import read_manifest, write_csv
from midigen.encodings import Scheme, row_ids
from midigen.encodings.bpe import BPE
from midigen.encodings.catalog import SCHEME_FILE, merges_of, scheme_for, write_scheme
from midigen.encodings.scores import Vocab, decode_tokens, encode_notes
from midigen.errors import MidigenError, read_json
from midigen.midi.files import (
    DROPPED,
    FILE_REPAIRS,
    NOTE_CHANGES,
    Limits,
    SkipSong,
    Song,
    read_capped,
    read_song,
    seconds_at,
    write_midi,
)
from midigen.progress import progress

SPLITS = ("train", "val", "test")
ARRAYS = {"tokens": np.uint16, "times": np.int32, "bar_pos": np.int32}
SONG_FIELDS = (
    *("sha256", "split", "source", "notes", "tokens", "steps", "seconds", "notes_read"),
    *NOTE_CHANGES,
    *FILE_REPAIRS,
)
SCHEME_PREFIX = "scheme_"  # songs.csv columns of what the scheme changed (Scheme.changes)
ERROR_FIELDS = ("path", "source", "reason", "detail")
FLAGGED_FIELDS = ("source", "sha256", "read", "dropped", "causes")  # flagged.csv
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
    changes: dict[str, int]  # notes dropped or changed, by cause (midi.files.NOTE_CHANGES)
    repairs: dict[str, int]  # how a file that broke a rule was read (midi.files.FILE_REPAIRS)
    scheme_changes: dict[str, int]  # what the scheme changed in the quantized notes, by cause
    seconds: float  # the song's length at its own tempo (bits per second divide by it)


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
        seconds_at(song.tempos, int(encoded.times[-1]), config.steps_per_beat),
    )


def _on_file(fn, task: tuple[Path, EncodeConfig]):
    """fn(file bytes, config), or the SkipSong saying why the file cannot be encoded."""
    path, config = task
    try:
        return fn(read_capped(path, config.limits.max_file_bytes), config)
    except SkipSong as skip:
        return skip


def parallel_map(fn, tasks: list, workers: int, desc: str) -> Iterator:
    """fn over tasks in order, on a process pool when workers > 1, with a progress bar."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(tasks) < 2:
        yield from progress(map(fn, tasks), desc, len(tasks), "file")
        return
    chunksize = max(1, min(64, len(tasks) // (workers * 8)))
    with ProcessPoolExecutor(workers) as pool:
        yield from progress(pool.map(fn, tasks, chunksize=chunksize), desc, len(tasks), "file")


def chunk_of(sha256: str, n_chunks: int) -> int:
    """Which encode chunk a file belongs to (hash bits independent of the split's)."""
    return int(sha256[8:16], 16) % n_chunks


def encode_chunk(
    raw_dir: Path, chunk: int, n_chunks: int, config: EncodeConfig, out: Path, workers: int = 0
) -> str:
    """Encode this chunk's files into `out`; return the one-line summary."""
    rows = sorted(  # in hash order, the order of the shards (`merged_songs`)
        (
            r
            for r in read_manifest(raw_dir / "manifest.csv")
            if chunk_of(r["sha256"], n_chunks) == chunk
        ),
        key=lambda r: r["sha256"],
    )
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
                "seconds": round(result.seconds, 3),
                "notes_read": result.notes_read,
                **result.changes,
                **result.repairs,
                **{f"{SCHEME_PREFIX}{k}": v for k, v in result.scheme_changes.items()},
            }
        )
    with atomic_dir(out) as tmp:
        _save_arrays(tmp, parts, [s["tokens"] for s in songs])
        write_csv(tmp / "songs.csv", song_fields(k for song in songs for k in song), songs)
        write_csv(tmp / "errors.csv", ERROR_FIELDS, errors)
        write_scheme(tmp, config.scheme_name, config.scheme_params)
    return _summary(f"chunk {chunk}/{n_chunks}", songs, errors)


def song_fields(names: Iterable[str]) -> tuple[str, ...]:
    """songs.csv's columns: the fixed ones, then those of `names` that say what the scheme
    changed, by cause."""
    return (*SONG_FIELDS, *sorted({n for n in names if n.startswith(SCHEME_PREFIX)}))


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

    def seconds(self) -> np.ndarray:
        """Each song's length in seconds at its own tempo, in order."""
        return np.array([float(song["seconds"]) for song in self.songs])

    def song_rows(self, fields: tuple[int, ...]) -> list[np.ndarray]:
        """Each song's rows, one int each (`row_ids`: a row of several fields whole), in order."""
        return [row_ids(self.tokens[self.song(i)], fields) for i in range(len(self.songs))]


def load_shard(shards_dir: Path, split: str, mmap: bool = True) -> Shard:
    folder = Path(shards_dir) / split
    if not (folder / "tokens.npy").exists():
        raise MidigenError(f"{folder}: no shard here (run the shard stage first)")
    mode = "r" if mmap else None
    arrays = {
        name: np.load(folder / f"{name}.npy", mmap_mode=mode) for name in (*ARRAYS, "offsets")
    }
    return Shard(songs=list(_iter_csv(folder / "songs.csv")), **arrays)


def build_shards(
    chunk_dirs: list[Path], config: EncodeConfig, out: Path, flag_lost_fraction: float
) -> str:
    """Gather encoded chunks into one shard per split, songs ordered by content hash; files
    that lost more than `flag_lost_fraction` of their notes are flagged (flagged.csv).

    Streams: each split is a k-way merge of the chunks' songs (every chunk is sorted by hash),
    each song read from the chunk's arrays on disk and appended to the split's files,
    and every statistic is a running sum, so memory does not grow with the corpus (merged
    schemes excepted: the tokenizer holds the training split while it learns the merges)."""
    chunks = [EncodedChunk(folder) for folder in chunk_dirs]
    missing = [str(chunk.folder) for chunk in chunks if not chunk.exists]
    if missing:
        raise MidigenError(f"encoded chunk not found: {', '.join(missing)} (run encode first)")
    wanted = {"scheme": config.scheme_name, "encode": config.scheme_params}
    for chunk in chunks:
        found = read_json(
            chunk.folder / SCHEME_FILE, f"{chunk.folder}: no {SCHEME_FILE} (run encode again)"
        )
        if found != wanted:
            raise MidigenError(
                f"{chunk.folder} was encoded as {found['scheme']} with {found['encode']}, not "
                f"as {wanted['scheme']} with {wanted['encode']} (run encode again)"
            )
    merges = None
    if merges_of(config.scheme_name, config.scheme_params):
        training = (arrays["tokens"] for _, arrays in merged_songs(chunks, "train"))
        count = merges_of(config.scheme_name, config.scheme_params)
        merges = BPE.train(config.scheme, training, count, config.scheme_name)
    scheme: Scheme = merges or config.scheme
    columns = song_fields(name for chunk in chunks for name in chunk.columns())
    stats: dict = {
        "scheme": config.scheme_name,
        "vocab_size": list(scheme.fields),
        "steps_per_beat": config.steps_per_beat,
        "splits": {},
    }
    with atomic_dir(out) as tmp, open(tmp / "flagged.csv", "w", newline="") as flagged:
        rows = csv.DictWriter(flagged, FLAGGED_FIELDS)
        rows.writeheader()
        tally = SongTally(columns, flag_lost_fraction, rows)
        for split in SPLITS:
            stats["splits"][split] = _write_split(
                tmp / split, chunks, split, merges, scheme.fields, columns, tally
            )
        errors = (row for chunk in chunks for row in _iter_csv(chunk.folder / "errors.csv"))
        skipped = collections.Counter()
        write_csv(tmp / "errors.csv", ERROR_FIELDS, _counted(errors, skipped))
        stats.update(skipped=dict(skipped), **tally.summary())
        write_scheme(tmp, config.scheme_name, config.scheme_params, merges)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    total = sum(s["tokens"] for s in stats["splits"].values())
    per_split = " / ".join(f"{k} {v['songs']}" for k, v in stats["splits"].items())
    songs = sum(v["songs"] for v in stats["splits"].values())
    notes = stats["notes"]
    return (
        f"{config.scheme_name}: {songs} songs ({per_split}), {total:,} tokens, "
        f"vocab {' x '.join(map(str, scheme.fields))}; "
        f"{notes['dropped']:,} of {notes['read']:,} notes dropped, {notes['changed']:,} changed, "
        f"{notes['flagged']} files flagged -> {out}"
    )


class EncodedChunk:
    """One encode job's output, read lazily: its songs streamed, each song's arrays read from
    disk as it comes (read, not memory-mapped: mapped pages a pass touches stay resident)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @property
    def exists(self) -> bool:
        return (self.folder / "songs.csv").exists()

    def columns(self) -> list[str]:
        with open(self.folder / "songs.csv", newline="") as f:
            return next(csv.reader(f), [])

    def songs(self, split: str) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
        """The chunk's songs of `split` in hash order, each with its arrays."""
        offsets, previous = np.load(self.folder / "offsets.npy"), ""
        with contextlib.ExitStack() as stack:
            arrays = {
                name: stack.enter_context(NpyReader(self.folder / f"{name}.npy")) for name in ARRAYS
            }
            for i, song in enumerate(_iter_csv(self.folder / "songs.csv")):
                if song["sha256"] < previous:
                    raise MidigenError(f"{self.folder}: songs not in hash order (run encode again)")
                previous = song["sha256"]
                if song["split"] == split:
                    start, stop = int(offsets[i]), int(offsets[i + 1])
                    yield song, {name: a.rows(start, stop) for name, a in arrays.items()}


class NpyReader:
    """Rows of an .npy file on disk, read on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> NpyReader:
        self.file = open(self.path, "rb")  # noqa: SIM115 (__exit__ closes it)
        version = np.lib.format.read_magic(self.file)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if read_header is None:
            raise MidigenError(f"{self.path}: npy format {version} (run encode again)")
        shape, fortran, self.dtype = read_header(self.file)
        if fortran:
            raise MidigenError(f"{self.path}: a Fortran-ordered array (run encode again)")
        self.row_shape, self.start = shape[1:], self.file.tell()
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def rows(self, start: int, stop: int) -> np.ndarray:
        at = self.start + start * self.row_bytes
        data = os.pread(self.file.fileno(), (stop - start) * self.row_bytes, at)
        return np.frombuffer(data, self.dtype).reshape(stop - start, *self.row_shape)


def merged_songs(
    chunks: list[EncodedChunk], split: str
) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
    """Every chunk's songs of `split`, in hash order across chunks (a k-way merge)."""
    return heapq.merge(
        *(chunk.songs(split) for chunk in chunks), key=lambda pair: pair[0]["sha256"]
    )


def _write_split(
    folder: Path,
    chunks: list[EncodedChunk],
    split: str,
    merges: BPE | None,
    fields: tuple[int, ...],
    columns: tuple[str, ...],
    tally: SongTally,
) -> dict:
    """One split's arrays and songs.csv, written song after song; what stats.json says of it."""
    folder.mkdir()
    with SplitWriter(folder, fields) as writer:
        songs = (writer.add(*pair, merges) for pair in merged_songs(chunks, split))
        write_csv(folder / "songs.csv", columns, map(tally.add, songs))
    return writer.stats()


class SplitWriter:
    """A split's .npy files, appended to song by song, and the token counts of its entropy."""

    def __init__(self, folder: Path, fields: tuple[int, ...]):
        self.arrays = {name: NpyAppender(folder / f"{name}.npy", t) for name, t in ARRAYS.items()}
        self.offsets = NpyAppender(folder / "offsets.npy", np.int64)
        self.counts = [np.zeros(size, np.int64) for size in fields]  # of each token, per field
        self.songs = self.notes = 0

    def __enter__(self) -> SplitWriter:
        for appender in (*self.arrays.values(), self.offsets):
            appender.open()
        self.offsets.append(np.zeros(1, np.int64))
        return self

    def __exit__(self, *exc) -> None:
        for appender in (*self.arrays.values(), self.offsets):
            appender.close()

    def add(self, song: dict, arrays: dict[str, np.ndarray], merges: BPE | None) -> dict:
        """Append one song (merged first, each merged token at its first base token's step);
        its songs.csv row."""
        if merges is not None:
            tokens, first = merges.merged(arrays["tokens"])
            arrays = {
                "tokens": tokens,
                "times": arrays["times"][first],
                "bar_pos": arrays["bar_pos"][first],
            }
            song = {**song, "tokens": len(tokens)}
        for name, appender in self.arrays.items():
            appender.append(arrays[name])
        self.offsets.append(np.array([self.arrays["tokens"].length]))
        rows = np.asarray(arrays["tokens"]).reshape(len(arrays["tokens"]), -1)
        for field_, count in enumerate(self.counts):
            count += np.bincount(rows[:, field_], minlength=len(count))
        self.songs, self.notes = self.songs + 1, self.notes + int(song["notes"])
        return song

    def stats(self) -> dict:
        tokens = self.arrays["tokens"].length
        return {
            "songs": self.songs,
            "tokens": tokens,
            "notes": self.notes,
            "unigram_entropy_bits": entropy_bits(self.counts) if tokens else math.nan,
        }


class NpyAppender:
    """An .npy file written piece by piece along its first axis: its header is rewritten with
    the final shape on close, so the array is never held in memory. (npy pads the header to
    64 bytes, so it keeps its size for any length below 10^15.)"""

    def __init__(self, path: Path, dtype: type):
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self.length, self.row_shape = 0, ()  # rows of more than one value: set by the first

    def open(self) -> None:
        self.file = open(self.path, "wb")  # noqa: SIM115 (close() closes it)
        self.header_size = self._header()

    def append(self, values: np.ndarray) -> None:
        if not self.length:
            self.row_shape = np.shape(values)[1:]
        self.file.write(np.ascontiguousarray(values, self.dtype).tobytes())
        self.length += len(values)

    def close(self) -> None:
        try:
            self.file.seek(0)
            if self._header() != self.header_size:
                raise MidigenError(f"{self.path}: array too long for its header")
        finally:
            self.file.close()

    def _header(self) -> int:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        shape = (self.length, *self.row_shape)
        np.lib.format.write_array_header_1_0(self.file, {**header, "shape": shape})
        return self.file.tell()


class SongTally:
    """What stats.json says of all songs written (notes dropped and changed by cause, files
    flagged for losing many notes, scheme changes, repairs), summed one song at a time. Every
    flagged file is a row of `flagged` (flagged.csv); stats.json and the log keep their count
    and the WORST that lost the largest share."""

    WORST = 20

    def __init__(
        self, columns: tuple[str, ...], flag_lost_fraction: float, flagged: csv.DictWriter
    ):
        self.flag_lost_fraction, self.flagged_rows = flag_lost_fraction, flagged
        self.scheme_columns = [c for c in columns if c.startswith(SCHEME_PREFIX)]
        self.counted = (*NOTE_CHANGES, *FILE_REPAIRS, *self.scheme_columns, "notes_read", "notes")
        self.totals = collections.Counter()
        self.repair_files = collections.Counter()
        self.flagged = 0
        self.worst: list[tuple[float, str, dict]] = []  # a heap: (share lost, hash, row)

    def add(self, song: dict) -> dict:
        """Count one song; the song."""
        for name in self.counted:
            self.totals[name] += int(song.get(name) or 0)
        for repair in FILE_REPAIRS:
            self.repair_files[repair] += int(song[repair]) > 0
        read, lost = int(song["notes_read"]), sum(int(song[cause]) for cause in DROPPED)
        if read and lost / read > self.flag_lost_fraction:
            causes = ", ".join(f"{c} {song[c]}" for c in DROPPED if int(song[c]))
            row = {"source": song["source"], "sha256": song["sha256"], "read": read}
            row |= {"dropped": lost, "causes": causes}
            self.flagged_rows.writerow(row)
            self.flagged += 1
            heapq.heappush(self.worst, (lost / read, song["sha256"], row))
            if len(self.worst) > self.WORST:
                heapq.heappop(self.worst)
        return song

    def summary(self) -> dict:
        """stats.json's notes, scheme_changes and repairs; a warning in the log names the
        flagged files (the worst, and where all of them are)."""
        by_cause = {cause: self.totals[cause] for cause in NOTE_CHANGES}
        worst = [row for *_, row in sorted(self.worst, reverse=True)]
        if worst:
            log.warning(
                "%d files lost more than %.0f%% of their notes (flagged.csv lists them), most: %s",
                self.flagged,
                100 * self.flag_lost_fraction,
                "; ".join(
                    f"{r['source']} {r['dropped']} of {r['read']} ({r['causes']})"
                    for r in worst[:5]
                ),
            )
        notes = {
            "read": self.totals["notes_read"],
            "kept": self.totals["notes"],
            "dropped": sum(by_cause[c] for c in DROPPED),
            "changed": sum(v for c, v in by_cause.items() if c not in DROPPED),
            "by_cause": by_cause,
            "flag_lost_fraction": self.flag_lost_fraction,
            "flagged": self.flagged,
            "flagged_worst": worst,
        }
        return {
            "notes": notes,
            "scheme_changes": {
                c.removeprefix(SCHEME_PREFIX): self.totals[c] for c in self.scheme_columns
            },
            "repairs": {
                r: {"files": self.repair_files[r], "count": self.totals[r]} for r in FILE_REPAIRS
            },
        }


def entropy_bits(counts: list[np.ndarray]) -> float:
    """Entropy in bits of token frequencies (`counts` per field, summed over a row's fields):
    the loss per row a model must beat to have learned anything."""
    total = 0.0
    for count in counts:
        p = count[count > 0] / count.sum()
        total += float(-(p * np.log2(p)).sum())
    return total


def _iter_csv(path: Path) -> Iterator[dict]:
    with open(path, newline="") as f:
        yield from csv.DictReader(f)


def _counted(errors: Iterator[dict], reasons: collections.Counter) -> Iterator[dict]:
    """`errors` as they pass, counted by reason."""
    for error in errors:
        reasons[error["reason"]] += 1
        yield error


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
