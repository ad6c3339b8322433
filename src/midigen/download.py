"""The download stage: gather MIDI files from one source into a deduplicated, split folder.

Output, built in a temp folder beside OUT and renamed into place only when complete:

    OUT/midi/<first 16 hex of sha256>.mid   one file per distinct content
    OUT/manifest.csv                         path, sha256, size, split, source (sorted by sha256)

Source order decides what `max_files` keeps and which copy of a duplicate names the file:
bach follows music21's chorale iterator, dir the sorted relative paths, url the archive's
member order (fixed, since the archive is pinned by its sha256). `max_files` limits the
files read from the source; exact duplicates among them are dropped afterwards.

Archive members are never extracted by name: their bytes are read and written under their
content hash, and any member that *would* land outside a target (absolute path, `..`, link,
device, fifo) makes the whole archive refused, as does one that inflates beyond reason.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import http.client
import logging
import os
import re
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import IO, Any

from tqdm import tqdm

from midigen.atomic import atomic_dir
from midigen.errors import MidigenError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "sha256", "size", "split", "source")
MIDI_SUFFIXES = (".mid", ".midi")
MAX_MEMBER_BYTES = 64 * 2**20  # far beyond any real MIDI file; a bigger member is a bomb
MAX_EXPANSION = 100  # archive members may add up to this many times the archive's size...
MIN_EXPANSION_BUDGET = 2**30  # ...or to 1 GiB, whichever is more
CHUNK_BYTES = 2**20
TIMEOUT_S = 60

Entry = tuple[str, bytes]  # (source name, file content)


@dataclass(frozen=True)
class Summary:
    """What a download produced; str() is the stage's one-line report."""

    out: Path
    splits: dict[str, int]
    duplicates: int
    skipped: int

    def __str__(self) -> str:
        counts = " / ".join(f"{s} {self.splits.get(s, 0)}" for s in SPLITS)
        skipped = f", {self.skipped} unreadable skipped" if self.skipped else ""
        return (
            f"{sum(self.splits.values())} files ({counts}), {self.duplicates} duplicates "
            f"dropped{skipped} -> {self.out}"
        )


def split_of(sha256_hex: str, val_fraction: float, test_fraction: float) -> str:
    """The split of a file from its content hash alone, so adding files never moves others."""
    x = int(sha256_hex[:8], 16) / 2**32
    if x < test_fraction:
        return "test"
    if x < test_fraction + val_fraction:
        return "val"
    return "train"


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a manifest.csv, `size` as int, in file order (sorted by sha256)."""
    if not Path(path).exists():
        raise MidigenError(f"{path}: not found (run midigen download first)")
    with open(path, newline="") as f:
        return [dict(row, size=int(row["size"])) for row in csv.DictReader(f)]


def download(params: dict[str, Any], out: str | Path) -> Summary:
    """Build OUT from the `download` section of params; on any failure the old OUT survives."""
    out = Path(out)
    limit = params["max_files"] or None
    fractions = (params["val_fraction"], params["test_fraction"])
    source = params["source"]
    skipped: list[str] = []
    if source == "url":
        with _fetched(params["url"], params["sha256"], out) as archive:
            return _build(out, _url_entries(params["url"], archive, limit), fractions, skipped)
    if source == "dir":
        entries = _dir_entries(Path(params["dir"]), limit)
    elif source == "bach":
        entries = _bach_entries(limit, skipped)
    else:
        raise MidigenError(f"unknown download.source {source!r} (expected bach, url or dir)")
    return _build(out, entries, fractions, skipped)


def _build(
    out: Path, entries: Iterable[Entry], fractions: tuple[float, float], skipped: list[str]
) -> Summary:
    """Write the files and manifest into a temp folder that replaces OUT only when complete."""
    with atomic_dir(out) as tmp:
        (tmp / "midi").mkdir()
        rows, duplicates = _write_files(entries, tmp, fractions)
        if not rows:
            raise MidigenError("the source holds no MIDI files (.mid/.midi)")
        _write_manifest(tmp / "manifest.csv", rows)
    splits = Counter(row["split"] for row in rows)
    return Summary(out, {s: splits[s] for s in SPLITS}, duplicates, len(skipped))


def _write_files(
    entries: Iterable[Entry],
    folder: Path,
    fractions: tuple[float, float],
) -> tuple[list[dict[str, Any]], int]:
    """Write each distinct content once, named by its hash; return manifest rows, duplicates."""
    first: dict[str, str] = {}
    rows = []
    duplicates = 0
    for source, data in entries:
        sha = hashlib.sha256(data).hexdigest()
        if sha in first:
            log.debug("%s duplicates %s; dropped", source, first[sha])
            duplicates += 1
            continue
        first[sha] = source
        rel = f"midi/{sha[:16]}.mid"
        if (folder / rel).exists():
            raise MidigenError(f"two different files share the hash prefix {sha[:16]} ({source})")
        (folder / rel).write_bytes(data)
        rows.append(
            {
                "path": rel,
                "sha256": sha,
                "size": len(data),
                "split": split_of(sha, *fractions),
                "source": source,
            }
        )
    rows.sort(key=lambda row: row["sha256"])
    return rows, duplicates


def _write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _is_midi(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)


# --- source: bach ----------------------------------------------------------------------------


def _bach_entries(limit: int | None, skipped: list[str]) -> Iterator[Entry]:
    """The chorales bundled with music21 as MIDI, rendered in parallel, in iterator order.

    A chorale that fails to render is logged and appended to `skipped`, never fatal.
    """
    from music21 import corpus  # slow to import; only this source needs it

    ids = list(corpus.chorales.Iterator(returnType="filename"))[:limit]
    pool = ProcessPoolExecutor(max(1, min(os.cpu_count() or 1, len(ids))))
    try:
        results = pool.map(_chorale_midi, ids, chunksize=4)
        for corpus_id, (data, error) in tqdm(
            zip(ids, results, strict=True), total=len(ids), desc="bach chorales", unit="file"
        ):
            if data is None:
                log.warning("skipping chorale %s: %s", corpus_id, error)
                skipped.append(corpus_id)
            else:
                yield corpus_id, data
    finally:  # if the consumer fails, don't wait for the remaining chorales
        pool.shutdown(cancel_futures=True)


def _chorale_midi(corpus_id: str) -> tuple[bytes | None, str]:
    """(MIDI bytes, "") for one chorale, or (None, why) when music21 cannot render it."""
    from music21 import bar, corpus, repeat
    from music21.midi.translate import streamToMidiFile
    from music21.repeat import ExpanderException

    try:
        score = corpus.parse(corpus_id)
        try:
            return streamToMidiFile(score).writestr(), ""
        except ExpanderException:  # badly formed repeat marks (bwv277): play it as written
            for mark in score.recurse().getElementsByClass((bar.Repeat, repeat.RepeatExpression)):
                mark.activeSite.remove(mark)
            return streamToMidiFile(score).writestr(), ""
    except Exception as e:  # music21 raises many types; one bad chorale must not stop the stage
        return None, f"{type(e).__name__}: {e}"


# --- source: dir -----------------------------------------------------------------------------


def _dir_entries(folder: Path, limit: int | None) -> Iterator[Entry]:
    """MIDI files under `folder` (recursively), in sorted relative-path order."""
    if not folder.is_dir():
        raise MidigenError(f"download.dir {folder} is not an existing folder")
    names = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and _is_midi(p.name)
    )
    return ((name, (folder / name).read_bytes()) for name in names[:limit])


# --- source: url -----------------------------------------------------------------------------


@contextlib.contextmanager
def _fetched(url: str, sha256: str, out: Path) -> Iterator[Path]:
    """Download `url` into a temp folder beside OUT and yield the file once its hash checks."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=f".{out.name}.", suffix=".download", dir=out.parent
    ) as tmp:
        path = Path(tmp) / "download"
        got = _fetch(url, path)
        if got != sha256.lower():
            raise MidigenError(f"sha256 mismatch for {url}: expected {sha256.lower()}, got {got}")
        yield path


def _fetch(url: str, dest: Path) -> str:
    """Stream `url` into `dest` in chunks; return its sha256."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, "wb") as f:
            size = response.headers.get("Content-Length", "")
            with tqdm(
                total=int(size) if size.isdigit() else None,
                unit="B",
                unit_scale=True,
                desc="download",
            ) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise MidigenError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise MidigenError(f"cannot download {url}: {e.reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise MidigenError(f"cannot download {url}: {e}") from None
    return digest.hexdigest()


def _url_entries(url: str, path: Path, limit: int | None) -> Iterator[Entry]:
    """Read what was downloaded by its content (a URL need not end in .zip or .mid)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"MThd":
        name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
        return iter([(name or url, path.read_bytes())])
    budget = max(MIN_EXPANSION_BUDGET, MAX_EXPANSION * path.stat().st_size)
    if zipfile.is_zipfile(path):
        return _budgeted(islice(_zip_entries(path), limit), budget)
    if tarfile.is_tarfile(path):
        return _budgeted(islice(_tar_entries(path), limit), budget)
    raise MidigenError(f"{url} is neither a MIDI file nor a .zip or .tar(.gz) archive")


def _zip_entries(path: Path) -> Iterator[Entry]:
    """MIDI members of a zip in archive order, after checking every member is safe."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                _check_zip_member(info)
            for info in archive.infolist():
                if not info.is_dir() and _is_midi(info.filename):
                    with archive.open(info) as f:
                        yield info.filename, _read_capped(f, info.filename)
    except (
        zipfile.BadZipFile,
        NotImplementedError,
        RuntimeError,
        OSError,
        EOFError,
        zlib.error,
    ) as e:
        raise MidigenError(f"damaged or unsupported zip archive ({e})") from None


def _tar_entries(path: Path) -> Iterator[Entry]:
    """MIDI members of a (compressed) tar in archive order, checking each member as it comes."""
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                _check_tar_member(member)
                if member.isfile() and _is_midi(member.name):
                    with archive.extractfile(member) as f:
                        yield member.name, _read_capped(f, member.name)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise MidigenError(f"damaged tar archive ({e})") from None


def _refuse(name: str, why: str) -> MidigenError:
    return MidigenError(f"archive member {name!r} {why}; refusing the archive")


def _check_name(name: str) -> None:
    """Refuse names that would land outside the target if anyone extracted them by name."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"[A-Za-z]:", posix):
        raise _refuse(name, "has an absolute path")
    if ".." in posix.split("/"):
        raise _refuse(name, "points outside the target folder (..)")


def _check_tar_member(member: tarfile.TarInfo) -> None:
    _check_name(member.name)
    if member.issym() or member.islnk():
        raise _refuse(member.name, f"is a link (to {member.linkname!r})")
    if member.isdev():
        raise _refuse(member.name, "is a device or fifo")
    if not (member.isfile() or member.isdir()):
        raise _refuse(member.name, "is neither a regular file nor a folder")


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    _check_name(info.filename)
    mode = info.external_attr >> 16  # Unix mode bits, 0 when the zip was made elsewhere
    if stat.S_ISLNK(mode):
        raise _refuse(info.filename, "is a symlink")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _refuse(info.filename, "is neither a regular file nor a folder")


def _read_capped(f: IO[bytes], name: str) -> bytes:
    """Read one member, refusing it past MAX_MEMBER_BYTES whatever its header claims."""
    data = f.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise _refuse(name, f"is larger than {MAX_MEMBER_BYTES} bytes")
    return data


def _budgeted(entries: Iterable[Entry], budget: int) -> Iterator[Entry]:
    """Stop an archive whose members add up to far more than it could plausibly hold."""
    total = 0
    for name, data in entries:
        total += len(data)
        if total > budget:
            raise _refuse(name, f"takes the extracted total past {budget} bytes (a zip bomb?)")
        yield name, data
