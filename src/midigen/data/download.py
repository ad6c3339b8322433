"""The download stage: gather MIDI files from one source into a deduplicated, split folder.

Output, built in a temp folder beside OUT and renamed into place only when complete:

    OUT/midi/<first 16 hex of sha256>.mid   one file per distinct content
    OUT/manifest.csv                         path, sha256, size, split, group, source (by sha256)
    OUT/skipped.csv                          source, reason: works that could not be rendered

Source order decides what `max_files` keeps and which copy of a duplicate names the file:
bach follows music21's chorale iterator, music21 its collections in the order given (each in
sorted path order), dir the sorted relative paths, url the archive's member order (fixed,
since the archive is pinned by its sha256). `max_files` limits the files read from the
source; exact duplicates among them are dropped afterwards.

The split keeps songs that share a tune together: a file's group is the hash of its top
voice's first 12 intervals (see `tune_of`), or its own content hash when it has no such tune,
and the split is a function of the group alone. Both come from the file's own bytes, so adding
files never moves old ones; a new file joins an old group only by having its tune.

Archive members are never extracted by name: their bytes are read and written under their
content hash, and any member that *would* land outside a target (absolute path, `..`, link,
device, fifo) makes the whole archive refused, as does one that inflates beyond reason.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import http.client
import json
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
from dataclasses import dataclass, field
from itertools import islice, repeat
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from midigen.atomic import atomic_dir, atomic_file
from midigen.errors import MidigenError
from midigen.midi.files import Limits, Notes, SkipSong, read_song
from midigen.progress import Progress, progress

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "sha256", "size", "split", "group", "source")
SKIPPED_COLUMNS = ("source", "reason")
MIDI_SUFFIXES = (".mid", ".midi")
MAX_MEMBER_BYTES = 64 * 2**20  # far beyond any real MIDI file; a bigger member is a bomb
MAX_EXPANSION = 100  # archive members may add up to this many times the archive's size...
MIN_EXPANSION_BUDGET = 2**30  # ...or to 1 GiB, whichever is more
CHUNK_BYTES = 2**20
TIMEOUT_S = 60

# A tune: the top voice's first TUNE_INTERVALS intervals over at least TUNE_PITCHES pitches,
# looked for in the first TUNE_ONSETS onsets, on a grid fine enough for sixteenths and
# triplets, with limits no real piece reaches.
TUNE_INTERVALS = 12
TUNE_PITCHES = 3
TUNE_ONSETS = 256
TUNE_STEPS_PER_BEAT = 12
TUNE_LIMITS = Limits(max_file_bytes=MAX_MEMBER_BYTES, max_notes=10**7, max_steps=2**20)

Entry = tuple[str, bytes]  # (source name, file content)


@dataclass(frozen=True)
class Summary:
    """What a download produced; str() is the stage's one-line report."""

    out: Path
    splits: dict[str, int]
    duplicates: int
    skipped: int
    as_written: int = 0  # works played as written: their repeats could not be expanded
    shared: int = 0  # files whose tune another file has too
    groups: int = 0  # tunes that several files share

    def __str__(self) -> str:
        counts = " / ".join(f"{s} {self.splits.get(s, 0)}" for s in SPLITS)
        parts = [
            f"{sum(self.splits.values())} files ({counts})",
            f"{self.shared} in {self.groups} shared-tune groups",
            f"{self.duplicates} duplicates dropped",
        ]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (skipped.csv)")
        if self.as_written:
            parts.append(f"{self.as_written} played as written (repeats not expandable)")
        return f"{', '.join(parts)} -> {self.out}"


@dataclass
class Tally:
    """What a source dropped or changed on the way, filled in as its entries are consumed."""

    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source name, reason)
    duplicates: int = 0  # a work in another format (music21), then exact copies of a file
    as_written: int = 0


def split_of(sha256_hex: str, val_fraction: float, test_fraction: float) -> str:
    """The split of a file from its content hash alone, so adding files never moves others."""
    x = int(sha256_hex[:8], 16) / 2**32
    if x < test_fraction:
        return "test"
    if x < test_fraction + val_fraction:
        return "val"
    return "train"


def tune_of(data: bytes) -> str | None:
    """The sha256 of a song's tune (its top voice's first intervals), None if it has none.

    Intervals make it transposition invariant, so one melody harmonised twice (Bach set many
    chorale tunes several times) has one tune whatever the key, the rhythm or the lower voices.
    A top voice of fewer than TUNE_PITCHES pitches is no tune: the repeated notes that open
    Beethoven's op. 59 no. 1 (i and ii) would otherwise join unrelated movements.
    """
    try:
        song = read_song(data, TUNE_STEPS_PER_BEAT, TUNE_LIMITS.max_steps, True, TUNE_LIMITS)
    except SkipSong:
        return None
    melody = top_voice(song.notes, TUNE_INTERVALS + 1)
    if len(melody) <= TUNE_INTERVALS or len(set(melody)) < TUNE_PITCHES:
        return None
    intervals = " ".join(map(str, np.diff(melody)))
    return hashlib.sha256(f"tune {intervals}".encode()).hexdigest()


def top_voice(notes: Notes, count: int) -> list[int]:
    """The first `count` pitches of the skyline: the highest note starting at each onset, unless
    a higher one is still sounding there (the melody holds while lower voices move)."""
    end = notes.onset + notes.duration
    starts = np.flatnonzero(np.r_[True, notes.onset[1:] != notes.onset[:-1]])
    bounds = np.r_[starts, len(notes)][: TUNE_ONSETS + 1]
    melody: list[int] = []
    for first, stop in zip(bounds[:-1], bounds[1:], strict=True):
        top = int(notes.pitch[first:stop].max())
        held = notes.pitch[:first][end[:first] > notes.onset[first]]
        if not held.size or top > held.max():
            melody.append(top)
            if len(melody) == count:
                break
    return melody


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
    tally = Tally()
    if source == "url":
        with _fetched(params["url"], params["sha256"], out) as archive:
            return _build(out, _url_entries(params["url"], archive, limit), fractions, tally)
    if source == "dir":
        entries = _dir_entries(Path(params["dir"]), limit, tally)
    elif source in ("bach", "music21"):
        collections = ["bach"] if source == "bach" else params["collections"]
        written = params["repeats"] == "written"
        entries = _music21_entries(collections, limit, cache_dir(params["cache"]), written, tally)
    else:
        raise MidigenError(
            f"unknown download.source {source!r} (expected bach, music21, url or dir)"
        )
    return _build(out, entries, fractions, tally)


def _build(
    out: Path, entries: Iterable[Entry], fractions: tuple[float, float], tally: Tally
) -> Summary:
    """Write the files and manifest into a temp folder that replaces OUT only when complete."""
    with atomic_dir(out) as tmp:
        (tmp / "midi").mkdir()
        rows = _write_files(entries, tmp, fractions, tally)
        if not rows:
            raise MidigenError("the source holds no MIDI files (.mid/.midi)")
        write_csv(tmp / "manifest.csv", MANIFEST_COLUMNS, rows)
        write_csv(
            tmp / "skipped.csv",
            SKIPPED_COLUMNS,
            [dict(zip(SKIPPED_COLUMNS, s, strict=True)) for s in tally.skipped],
        )
    splits = Counter(row["split"] for row in rows)
    shared = [n for n in Counter(row["group"] for row in rows).values() if n > 1]
    return Summary(
        out,
        {s: splits[s] for s in SPLITS},
        tally.duplicates,
        len(tally.skipped),
        tally.as_written,
        sum(shared),
        len(shared),
    )


def _write_files(
    entries: Iterable[Entry], folder: Path, fractions: tuple[float, float], tally: Tally
) -> list[dict[str, Any]]:
    """Write each distinct content once, named by its hash; return the manifest rows.

    Exact duplicates are dropped and counted in `tally`. A file's split is that of its group:
    its tune, or its own content when it has none.
    """
    first: dict[str, str] = {}
    rows = []
    for source, data in entries:
        sha = hashlib.sha256(data).hexdigest()
        if sha in first:
            log.debug("%s duplicates %s; dropped", source, first[sha])
            tally.duplicates += 1
            continue
        first[sha] = source
        rel = f"midi/{sha[:16]}.mid"
        if (folder / rel).exists():
            raise MidigenError(f"two different files share the hash prefix {sha[:16]} ({source})")
        (folder / rel).write_bytes(data)
        group = tune_of(data) or sha
        rows.append(
            {
                "path": rel,
                "sha256": sha,
                "size": len(data),
                "split": split_of(group, *fractions),
                "group": group[:16],
                "source": source,
            }
        )
    rows.sort(key=lambda row: row["sha256"])
    return rows


def write_csv(path: Path, columns: tuple[str, ...], rows: Iterable[dict[str, Any]]) -> None:
    """One CSV with a header, also when there are no rows (a reader needs no special case)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _is_midi(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)


# --- source: music21 (bach: its chorales) -----------------------------------------------------

# Score formats music21 renders, in order of preference for a work shipped in several
# (.rntxt files are Roman-numeral analyses, not scores).
MUSIC21_FORMATS = (".mxl", ".xml", ".musicxml", ".krn", ".abc")
CACHE_VERSION = 1  # part of the cache key: bump it when rendering changes
MAX_REPEAT_GROWTH = 4  # no bar plays more than 4 times: twice, then twice again after a da capo


@dataclass(frozen=True)
class Rendered:
    """One corpus file as MIDI: its works as entries and how many play as written, or why not."""

    works: tuple[Entry, ...] = ()
    as_written: int = 0
    error: str = ""


def cache_dir(setting: str | None) -> Path:
    """The folder of rendered music21 works: `download.cache`, else the user's cache folder."""
    if setting:
        return Path(setting).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "midigen" / "music21"


def music21_ids(collections: Iterable[str]) -> tuple[list[str], int]:
    """Corpus paths of the collections in order, and how many were a work in another format.

    `bach` is music21's chorale list (the bach source); any other name is a top-level folder of
    music21's corpus, in sorted path order. A work shipped in several formats (Beethoven's
    op. 18 no. 1 as .mxl and .krn) has one path in several suffixes, and only the first of
    MUSIC21_FORMATS is kept. The path is what tells them apart: the two renders differ (the
    .krn and .mxl of op. 18/1/iii give 3506 and 3535 notes) and only the .krn has a title.
    """
    from music21 import corpus  # slow to import; only these sources need it

    available = _collection_paths()
    ids: list[str] = []
    duplicates = 0
    for name in collections:
        if name == "bach":
            ids += corpus.chorales.Iterator(returnType="filename")
        elif name in available:
            kept = _one_format(available[name])
            duplicates += len(available[name]) - len(kept)
            ids += kept
        else:
            raise MidigenError(
                f"download.collections: music21 has no collection {name!r} "
                f"(it has {', '.join(sorted(available))})"
            )
    return ids, duplicates


def _collection_paths() -> dict[str, list[str]]:
    """music21's corpus score files (relative paths, sorted) by top-level folder."""
    from music21 import common, corpus

    root = Path(common.getCorpusFilePath())
    found: dict[str, list[str]] = {}
    for path in sorted(Path(p).relative_to(root) for p in corpus.getCorePaths()):
        if len(path.parts) > 1 and path.suffix.lower() in MUSIC21_FORMATS:
            found.setdefault(path.parts[0], []).append(path.as_posix())
    return found


def _one_format(paths: list[str]) -> list[str]:
    """Each work once: of one path in several suffixes, the first in MUSIC21_FORMATS."""
    best: dict[str, str] = {}
    for path in paths:
        stem = path.rsplit(".", 1)[0]
        if stem not in best or _format_rank(path) < _format_rank(best[stem]):
            best[stem] = path
    return sorted(best.values())


def _format_rank(path: str) -> int:
    """Lower is preferred: MusicXML first, the format most of the corpus ships in."""
    return MUSIC21_FORMATS.index(PurePosixPath(path).suffix.lower())


def _music21_entries(
    collections: list[str], limit: int | None, cache: Path, written: bool, tally: Tally
) -> Iterator[Entry]:
    """The works of music21 collections as MIDI (`written`: each section once, repeat marks
    not expanded), rendered in parallel or cached, in order.

    A file that fails to parse or render is logged and listed in `tally.skipped`, never fatal.
    """
    import music21

    ids, tally.duplicates = music21_ids(collections)
    ids = ids[:limit]
    form = "-written" if written else ""
    folder = cache / f"music21-{music21.__version__}-v{CACHE_VERSION}{form}"
    pool = ProcessPoolExecutor(max(1, min(os.cpu_count() or 1, len(ids))))
    try:
        results = pool.map(cached_render, ids, repeat(folder), repeat(written))
        rendered_works = zip(ids, results, strict=True)
        for corpus_id, rendered in progress(rendered_works, "music21", len(ids), "work"):
            if rendered.error:
                log.warning("skipping %s: %s", corpus_id, rendered.error)
                tally.skipped.append((corpus_id, rendered.error))
            tally.as_written += rendered.as_written
            yield from rendered.works
    finally:  # if the consumer fails, don't wait for the remaining works
        pool.shutdown(cancel_futures=True)


def cached_render(corpus_id: str, folder: Path, written: bool = False) -> Rendered:
    """A corpus file's MIDI from the cache, else rendered and cached (music21 takes a minute or
    more on a quartet). Failures are not cached: they may be passing (memory) and are rare."""
    path = folder / f"{corpus_id}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # absent or unreadable
        cached = json.loads(path.read_text())
        works = tuple((w["name"], base64.b64decode(w["midi"])) for w in cached["works"])
        return Rendered(works, cached["as_written"])
    rendered = render(corpus_id, written)
    if not rendered.error:
        works = [{"name": n, "midi": base64.b64encode(d).decode()} for n, d in rendered.works]
        try:
            with atomic_file(path) as f:
                json.dump({"works": works, "as_written": rendered.as_written}, f)
        except OSError as e:  # the cache only saves time
            log.warning("cannot cache %s: %s", path, e)
    return rendered


def render(corpus_id: str, written: bool = False) -> Rendered:
    """MIDI of every work in one corpus file, repeats expanded as performed (`written`: not
    expanded); never raises."""
    from music21 import corpus

    try:
        works = [
            (name, *_score_midi(score, written))
            for name, score in _works(corpus_id, corpus.parse(corpus_id))
        ]
    except Exception as e:  # music21 raises many types; one bad work must not stop the stage
        return Rendered(error=f"{type(e).__name__}: {e}")
    return Rendered(tuple((n, data) for n, data, _ in works), sum(w for *_, w in works))


def _works(corpus_id: str, parsed: Any) -> list[tuple[str, Any]]:
    """The works in a parsed file. An opus (an ABC tune book) holds several, one per score,
    unless its scores share one title: then they are the voices of one piece (Josquin)."""
    from music21 import stream

    if not isinstance(parsed, stream.Opus):
        return [(corpus_id, parsed)]
    scores = list(parsed.scores)
    if len({score.metadata.title if score.metadata else None for score in scores}) == 1:
        return [(corpus_id, parsed.mergeScores())]
    return [(f"{corpus_id}#{i}", score) for i, score in enumerate(scores, 1)]


def _score_midi(score: Any, written: bool = False) -> tuple[bytes, int]:
    """(MIDI, 0) with repeats expanded as performed (music21's MIDI writer expands them), or
    (MIDI, 1) played as written when its repeat marks are malformed; `written`: (MIDI, 0) as
    written, asked for."""
    from music21.midi.translate import streamToMidiFile
    from music21.repeat import ExpanderException

    if not written and _expands_sanely(score):
        with contextlib.suppress(ExpanderException):  # a later part's marks may still fail
            return streamToMidiFile(score).writestr(), 0
    for mark in _repeat_marks(score):
        mark.activeSite.remove(mark)
    return streamToMidiFile(score).writestr(), int(not written)


def _expands_sanely(score: Any) -> bool:
    """Whether the repeats expand (not bwv277's) to at most MAX_REPEAT_GROWTH times the
    written length (op. 18 no. 4: 4.2 times, 10 minutes to render; op. 18 no. 1/iii, a
    scherzo and trio, is 3.1 rightly). Judged on the first part: expanding copies it."""
    from music21.repeat import ExpanderException

    if not _repeat_marks(score):
        return True
    part = score.parts[0] if score.hasPartLikeStreams() else score
    try:
        performed = part.expandRepeats()
    except ExpanderException:
        return False
    return performed.highestTime <= MAX_REPEAT_GROWTH * part.highestTime


def _repeat_marks(score: Any) -> list[Any]:
    """The marks music21 expands: repeat barlines and expressions (da capo, segno, ...)."""
    from music21 import bar, repeat

    return list(score.recurse().getElementsByClass((bar.Repeat, repeat.RepeatExpression)))


# --- source: dir -----------------------------------------------------------------------------


def _dir_entries(folder: Path, limit: int | None, tally: Tally) -> Iterator[Entry]:
    """MIDI files under `folder` (recursively), in sorted relative-path order.

    A link is followed only while it stays inside `folder`; a file past MAX_MEMBER_BYTES (the
    archives' cap), one that cannot be read or one that vanished is listed in skipped.csv with
    its reason, and the rest carry on.
    """
    if not folder.is_dir():
        raise MidigenError(f"download.dir {folder} is not an existing folder")
    root, names = folder.resolve(), []

    def unlistable(error: OSError) -> None:  # os.walk would drop the folder without a word
        name = printable(Path(error.filename).relative_to(folder).as_posix())
        why = f"is a folder that could not be listed ({error.strerror or error})"
        log.warning("download.dir: %s %s; skipped", name, why)
        tally.skipped.append((name, why))

    for top, folders, files in os.walk(folder, onerror=unlistable):  # links to folders: not
        here = Path(top).relative_to(folder)  # descended into
        for name in sorted(f for f in folders if (Path(top) / f).is_symlink()):
            link = printable((here / name).as_posix())
            tally.skipped.append((link, "is a link to a folder (not followed)"))
        names += [(here / name).as_posix() for name in files if _is_midi(name)]
    for name in sorted(names)[:limit]:
        data, why = _read_inside(folder / name, root)
        shown = printable(name)
        if why:
            log.warning("download.dir: %s %s; skipped", shown, why)
            tally.skipped.append((shown, why))
        else:
            yield shown, data


def printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (which the OS hands over as surrogates)
    written as \\xNN escapes, so that the name can go into the manifest and the log."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _read_inside(path: Path, root: Path) -> tuple[bytes, str]:
    """The file's bytes, or an empty result and why it may not or cannot be read."""
    try:
        target = path.resolve(strict=True)
        if not target.is_relative_to(root):
            return b"", f"is a link to {target}, outside the source folder"
        if not target.is_file():
            return b"", "is not a regular file"
        if target.stat().st_size > MAX_MEMBER_BYTES:
            return b"", f"is larger than {MAX_MEMBER_BYTES} bytes"
        with open(target, "rb") as f:
            data = f.read(MAX_MEMBER_BYTES + 1)
    except FileNotFoundError:
        if path.is_symlink():
            return b"", "is a link to a missing file"
        return b"", "vanished while the folder was read"
    except RuntimeError:  # Python 3.11's resolve(strict=True) on a loop of links
        return b"", "is a link in a loop of links"
    except OSError as e:
        return b"", f"could not be read ({e.strerror or e})"
    if len(data) > MAX_MEMBER_BYTES:
        return b"", f"is larger than {MAX_MEMBER_BYTES} bytes"
    return data, ""


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
            total = int(size) // 2**20 if size.isdigit() else None
            with Progress(f"download {url}", total, "MiB") as shown:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    digest.update(chunk)
                    shown.update(len(chunk) / 2**20)
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
