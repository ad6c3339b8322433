"""The download stage on real archives, a real HTTP server, real folders and music21's chorales."""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import http.server
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import mido
import numpy as np
import pytest
import yaml

from midigen.data import download as dl
from midigen.data.download import (
    SPLITS,
    download,
    music21_ids,
    read_manifest,
    split_of,
    top_voice,
    tune_of,
)
from midigen.errors import MidigenError
from midigen.midi.files import Notes
from midigen.params import validate_params

REPO = Path(__file__).resolve().parents[1]


def run_download(params: dict, out: Path):
    """The library call as the stage makes it: params checked and defaults filled first."""
    return download(validate_params({"download": params}, partial=True)["download"], out)


def midi_bytes(*pitches: int) -> bytes:
    """A small real MIDI file; different pitches give different content."""
    track = mido.MidiTrack()
    for pitch in pitches:
        track.append(mido.Message("note_on", note=pitch, velocity=64, time=0))
        track.append(mido.Message("note_off", note=pitch, velocity=0, time=240))
    song = mido.MidiFile(ticks_per_beat=480)
    song.tracks.append(track)
    buffer = io.BytesIO()
    song.save(file=buffer)
    return buffer.getvalue()


def song(*voices: list[tuple[int, int]]) -> bytes:
    """A MIDI file with one track per voice, each a run of (pitch, beats) notes."""
    file = mido.MidiFile(ticks_per_beat=480)
    for voice in voices:
        track = mido.MidiTrack()
        for pitch, beats in voice:
            track.append(mido.Message("note_on", note=pitch, velocity=64, time=0))
            track.append(mido.Message("note_off", note=pitch, velocity=0, time=480 * beats))
        file.tracks.append(track)
    buffer = io.BytesIO()
    file.save(file=buffer)
    return buffer.getvalue()


TUNE = [67, 67, 69, 71, 71, 69, 67, 66, 64, 66, 67, 67, 66, 64]  # 14 notes, 13 intervals


def chorale(shift: int, bass: int, tune: list[int] = TUNE) -> bytes:
    """The tune in quarters over a moving bass: another shift or bass is another harmonisation."""
    return song([(p + shift, 1) for p in tune], [(bass + i % 3, 1) for i in range(len(tune))])


A, B, C = midi_bytes(60, 62), midi_bytes(64, 65, 67), midi_bytes(48)
# Archive members in archive order: a non-MIDI file, a duplicate of A (dropped) and a folder.
MEMBERS = {
    "songs/a.mid": A,
    "songs/readme.txt": b"not midi",
    "songs/deep/B.MIDI": B,
    "songs/c.mid": C,
    "songs/copy-of-a.mid": A,
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("songs/", b"")
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def make_tar(
    path: Path, members: dict[str, bytes], extra: Callable[[tarfile.TarFile], None] | None = None
) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        folder = tarfile.TarInfo("songs")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if extra:
            extra(archive)
    return path


def url_params(path: Path, url: str | None = None, **extra) -> dict:
    return {"source": "url", "url": url or path.as_uri(), "sha256": sha(path.read_bytes()), **extra}


def tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` with its bytes and mtime, to prove nothing changed."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def check_output(out: Path) -> list[dict]:
    """The manifest is sorted, matches the files on disk, and names them by content hash."""
    rows = read_manifest(out / "manifest.csv")
    assert [r["sha256"] for r in rows] == sorted(r["sha256"] for r in rows)
    assert sorted(p.name for p in (out / "midi").iterdir()) == sorted(
        Path(r["path"]).name for r in rows
    )
    for row in rows:
        data = (out / row["path"]).read_bytes()
        assert row["path"] == f"midi/{row['sha256'][:16]}.mid"
        assert sha(data) == row["sha256"] and len(data) == row["size"]
        assert row["split"] in SPLITS
        assert re.fullmatch(r"[0-9a-f]{16}", row["group"])
    by_group: dict[str, set[str]] = {}
    for row in rows:
        by_group.setdefault(row["group"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in by_group.values())  # a tune stays in one split
    assert (out / "skipped.csv").read_text().startswith("source,reason\n")
    return rows


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on 127.0.0.1 serving a folder: (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- split_of ---------------------------------------------------------------------------------


def test_split_of_is_deterministic_and_proportional() -> None:
    rng = random.Random(0)
    hashes = [sha(rng.randbytes(16)) for _ in range(2000)]
    splits = [split_of(h, 0.1, 0.2) for h in hashes]
    assert splits == [split_of(h, 0.1, 0.2) for h in hashes]
    assert abs(splits.count("val") / 2000 - 0.1) < 0.03
    assert abs(splits.count("test") / 2000 - 0.2) < 0.03
    assert {split_of(h, 0, 0) for h in hashes} == {"train"}


def test_split_is_stable_when_files_are_added(tmp_path: Path) -> None:
    """Old files never move; a new file joins an old group only by sharing its tune."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"{i:02}.mid").write_bytes(midi_bytes(30 + i))
    (corpus / "tune.mid").write_bytes(chorale(0, 48))
    params = {"source": "dir", "dir": str(corpus), "val_fraction": 0.3, "test_fraction": 0.3}
    run_download(params, tmp_path / "out")
    before = {r["sha256"]: r["split"] for r in read_manifest(tmp_path / "out/manifest.csv")}
    for i in range(20, 40):
        (corpus / f"{i:02}.mid").write_bytes(midi_bytes(30 + i))
    (corpus / "tune-in-d.mid").write_bytes(chorale(-5, 40))
    summary = run_download(params, tmp_path / "out")
    after = {r["sha256"]: r["split"] for r in read_manifest(tmp_path / "out/manifest.csv")}
    assert len(after) == 42 and set(before.values()) == set(SPLITS)
    assert {h: after[h] for h in before} == before
    assert after[sha(chorale(-5, 40))] == before[sha(chorale(0, 48))]
    assert (summary.shared, summary.groups) == (2, 1)


def test_one_tune_in_two_keys_shares_a_split(tmp_path: Path) -> None:
    """Two harmonisations whose content hashes alone would split them apart share one split."""
    first = chorale(0, 48)
    apart = [chorale(shift, 43) for shift in range(-6, 7)]
    second = next(d for d in apart if split_of(sha(d), 0.3, 0.3) != split_of(sha(first), 0.3, 0.3))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, data in {"first.mid": first, "second.mid": second, "a.mid": A, "b.mid": B}.items():
        (corpus / name).write_bytes(data)
    params = {"source": "dir", "dir": str(corpus), "val_fraction": 0.3, "test_fraction": 0.3}
    summary = run_download(params, tmp_path / "out")
    rows = {r["source"]: r for r in check_output(tmp_path / "out")}
    tune = tune_of(first)
    assert rows["first.mid"]["group"] == rows["second.mid"]["group"] == tune[:16]
    assert rows["first.mid"]["split"] == rows["second.mid"]["split"] == split_of(tune, 0.3, 0.3)
    assert rows["a.mid"]["group"] == sha(A)[:16]  # too short for a tune: its own group
    assert rows["a.mid"]["split"] == split_of(sha(A), 0.3, 0.3)
    assert "4 files (" in str(summary) and ", 2 in 1 shared-tune groups, " in str(summary)


def test_split_of_by_hand() -> None:
    """The first 8 hex digits as a fraction of 2**32: below test_fraction is test, then val."""
    assert split_of("0" * 64, 0.1, 0.1) == "test"
    assert split_of("19999999" + "f" * 56, 0.1, 0.1) == "test"  # 0.09999...
    assert split_of("1a000000" + "0" * 56, 0.1, 0.1) == "val"  # 0.1016
    assert split_of("33333334" + "0" * 56, 0.1, 0.1) == "train"  # 0.2000...1
    assert split_of("f" * 64, 0.1, 0.1) == "train"


def test_a_tune_is_the_top_voices_intervals() -> None:
    tune = tune_of(chorale(0, 48))
    # TUNE's first 13 pitches 67 67 69 71 71 69 67 66 64 66 67 67 66, as 12 intervals:
    assert tune == hashlib.sha256(b"tune 0 2 2 0 -2 -2 -1 -2 2 1 0 -1").hexdigest()
    assert tune is not None and tune == tune_of(chorale(7, 36))  # another key, another bass
    # The soprano holds its first note while an inner voice moves: still the same tune.
    held = song([(67, 2), *[(p, 1) for p in TUNE[1:]]], [(60, 1), (62, 1)], [(48, 15)])
    assert tune_of(held) == tune
    assert tune_of(chorale(0, 48, [*TUNE[:5], 70, *TUNE[6:]])) != tune
    assert tune_of(chorale(0, 48, TUNE[:12])) is None  # 11 intervals: no tune
    assert tune_of(chorale(0, 48, [60, 62] * 7)) is None  # two pitches: an accompaniment
    assert tune_of(b"not midi") is None


def test_top_voice_is_the_skyline() -> None:
    # onset, pitch, duration: a soprano holding over a moving alto, then both moving.
    notes = [(0, 72, 8), (0, 64, 4), (4, 65, 4), (8, 71, 4), (8, 62, 4), (12, 60, 4)]
    onset, pitch, duration = (np.array(column) for column in zip(*notes, strict=True))
    melody = top_voice(Notes(onset, np.zeros_like(onset), pitch, duration), 10)
    assert melody == [72, 71, 60]


# --- source: url -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [make_zip, make_tar], ids=["zip", "tar.gz"])
def test_url_archive_over_http(make, http_root, tmp_path: Path) -> None:
    root, base = http_root
    archive = make(root / f"midi.{'zip' if make is make_zip else 'tar.gz'}", MEMBERS)
    summary = run_download(url_params(archive, f"{base}/{archive.name}"), tmp_path / "out")

    rows = check_output(tmp_path / "out")
    assert {r["sha256"]: r["source"] for r in rows} == {
        sha(A): "songs/a.mid",
        sha(B): "songs/deep/B.MIDI",
        sha(C): "songs/c.mid",
    }
    assert summary.duplicates == 1 and sum(summary.splits.values()) == 3
    assert str(summary).startswith("3 files (train ") and "1 duplicates dropped" in str(summary)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "served"]  # no temp left


def test_url_archive_max_files_counts_before_dedup(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "midi.tgz", {"a.mid": A, "a2.mid": A, "b.mid": B, "c.mid": C})
    summary = run_download(url_params(archive, max_files=3), tmp_path / "out")
    assert {r["source"] for r in check_output(tmp_path / "out")} == {"a.mid", "b.mid"}
    assert summary.duplicates == 1


def test_file_url_of_a_single_midi(tmp_path: Path) -> None:
    song = tmp_path / "my song.mid"
    song.write_bytes(B)
    run_download(url_params(song), tmp_path / "out")
    [row] = check_output(tmp_path / "out")
    assert row["source"] == "my song.mid" and row["sha256"] == sha(B)


def test_http_error_is_one_clear_line(http_root, tmp_path: Path) -> None:
    _, base = http_root
    params = {"source": "url", "url": f"{base}/missing.zip", "sha256": "0" * 64}
    with pytest.raises(MidigenError, match=r"cannot download .*missing\.zip: HTTP 404"):
        run_download(params, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_sha256_mismatch_leaves_old_output_untouched(http_root, tmp_path: Path, scheme) -> None:
    """The checksum pins the archive whatever the URL's scheme (http:// or file://)."""
    root, base = http_root
    base = base if scheme == "http" else root.as_uri()
    archive = make_zip(root / "midi.zip", MEMBERS)
    (root / "old.mid").write_bytes(C)
    out = tmp_path / "data" / "raw"
    run_download({"source": "dir", "dir": str(root)}, out)
    (out / "marker.txt").write_text("old output")
    before = tree(out)

    params = dict(url_params(archive, f"{base}/midi.zip"), sha256="ab" * 32)
    expected = f"for {base}/midi.zip: expected {'ab' * 32}, got {sha(archive.read_bytes())}"
    with pytest.raises(MidigenError, match=f"sha256 mismatch {expected}"):
        run_download(params, out)
    assert tree(out) == before
    assert [p.name for p in out.parent.iterdir()] == ["raw"]


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "page.html"
    junk.write_text("<html>sign in to download</html>")
    with pytest.raises(MidigenError, match="neither a MIDI file nor a .zip or .tar"):
        run_download(url_params(junk), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- hostile archives ---------------------------------------------------------------------------


def add_symlink(archive: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("songs/link.mid")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive.addfile(info)


def add_hardlink(archive: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("songs/hard.mid")
    info.type, info.linkname = tarfile.LNKTYPE, "../../outside.mid"
    archive.addfile(info)


def add_fifo(archive: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("songs/pipe.mid")
    info.type = tarfile.FIFOTYPE
    archive.addfile(info)


def add_device(archive: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("songs/null.mid")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    archive.addfile(info)


def make_zip_special(path: Path, members: dict[str, bytes], name: str, mode: int) -> Path:
    """A zip holding one member whose Unix mode bits say `mode` (as zip -y stores links)."""
    special = zipfile.ZipInfo(name)
    special.external_attr = mode << 16
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
        archive.writestr(special, "/etc/passwd")
    return path


def add_unknown_type(archive: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("songs/odd.mid")
    info.type = b"Z"  # no type tarfile knows: neither file, folder, link nor device
    archive.addfile(info)


# Archives that try to write outside their target: case -> (build(path, abs_dir), bad member,
# the reason the refusal gives). An absolute member name points into `abs_dir` so the test can
# check it was never written.
Build = Callable[[Path, Path], Path]
HOSTILE: dict[str, tuple[Build, str, str]] = {
    "tar-dotdot": (
        lambda p, _: make_tar(p, {"a.mid": A, "../evil.mid": B}),
        "../evil.mid",
        "points outside the target folder (..)",
    ),
    "tar-backslash-dotdot": (
        lambda p, _: make_tar(p, {"a.mid": A, "songs\\..\\..\\evil.mid": B}),
        "songs\\..\\..\\evil.mid",
        "points outside the target folder (..)",
    ),
    "tar-absolute": (
        lambda p, d: make_tar(p, {"a.mid": A, f"{d}/evil.mid": B}),
        "{abs}",
        "has an absolute path",
    ),
    "tar-symlink": (
        lambda p, _: make_tar(p, {"a.mid": A}, add_symlink),
        "songs/link.mid",
        "is a link (to '/etc/passwd')",
    ),
    "tar-hardlink": (
        lambda p, _: make_tar(p, {"a.mid": A}, add_hardlink),
        "songs/hard.mid",
        "is a link (to '../../outside.mid')",
    ),
    "tar-fifo": (
        lambda p, _: make_tar(p, {"a.mid": A}, add_fifo),
        "songs/pipe.mid",
        "is a device or fifo",
    ),
    "tar-device": (
        lambda p, _: make_tar(p, {"a.mid": A}, add_device),
        "songs/null.mid",
        "is a device or fifo",
    ),
    "tar-unknown-type": (
        lambda p, _: make_tar(p, {"a.mid": A}, add_unknown_type),
        "songs/odd.mid",
        "is neither a regular file nor a folder",
    ),
    "zip-dotdot": (
        lambda p, _: make_zip(p, {"a.mid": A, "songs/../../evil.mid": B}),
        "songs/../../evil.mid",
        "points outside the target folder (..)",
    ),
    "zip-absolute": (
        lambda p, _: make_zip(p, {"a.mid": A, "/evil.mid": B}),
        "/evil.mid",
        "has an absolute path",
    ),
    "zip-drive-upper": (
        lambda p, _: make_zip(p, {"a.mid": A, "C:evil.mid": B}),
        "C:evil.mid",
        "has an absolute path",
    ),
    "zip-drive-lower": (
        lambda p, _: make_zip(p, {"a.mid": A, "d:/evil.mid": B}),
        "d:/evil.mid",
        "has an absolute path",
    ),
    "zip-symlink": (
        lambda p, _: make_zip_special(p, {"a.mid": A}, "songs/link.mid", 0o120777),
        "songs/link.mid",
        "is a symlink",
    ),
    "zip-fifo": (
        lambda p, _: make_zip_special(p, {"a.mid": A}, "songs/pipe.mid", 0o010644),
        "songs/pipe.mid",
        "is neither a regular file nor a folder",
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archive_is_refused(case: str, tmp_path: Path) -> None:
    build, member, reason = HOSTILE[case]
    elsewhere = tmp_path / "elsewhere"
    archive = build(tmp_path / "archive", elsewhere)
    member = member.replace("{abs}", f"{elsewhere}/evil.mid")
    with tarfile.open(archive) if case.startswith("tar") else zipfile.ZipFile(archive) as a:
        names = a.getnames() if case.startswith("tar") else a.namelist()
    assert member in names  # the archive really holds the hostile name
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    with pytest.raises(MidigenError) as error:
        run_download(url_params(archive), work / "out")
    assert str(error.value) == f"archive member {member!r} {reason}; refusing the archive"
    assert list(work.iterdir()) == []  # no output, no temp folder
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["archive", "deep", "work"]


def test_members_are_read_up_to_the_cap_and_budget_exactly() -> None:
    """A member of exactly MAX_MEMBER_BYTES is read, one byte more refused; an archive whose
    members add up to exactly the budget is read, one byte more refused (naming that member)."""
    exact = dl.MAX_MEMBER_BYTES
    assert len(dl._read_capped(io.BytesIO(bytes(exact)), "big.mid")) == exact
    with pytest.raises(MidigenError) as error:
        dl._read_capped(io.BytesIO(bytes(exact + 1)), "big.mid")
    assert str(error.value) == (
        f"archive member 'big.mid' is larger than {exact} bytes; refusing the archive"
    )
    entries = [("a.mid", b"123"), ("b.mid", b"45")]
    assert list(dl._budgeted(entries, budget=5)) == entries
    with pytest.raises(MidigenError) as error:
        list(dl._budgeted(entries, budget=4))
    assert str(error.value) == (
        "archive member 'b.mid' takes the extracted total past 4 bytes (a zip bomb?); "
        "refusing the archive"
    )


def test_oversized_member_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(dl, "MAX_MEMBER_BYTES", 1000)
    archive = make_zip(tmp_path / "big.zip", {"a.mid": A, "big.mid": A + bytes(5000)})
    with pytest.raises(MidigenError, match="member 'big.mid' is larger than 1000 bytes"):
        run_download(url_params(archive), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zip"]


def test_zip_bomb_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(dl, "MIN_EXPANSION_BUDGET", 0)
    members = {f"{i}.mid": A + bytes([i]) * 20_000 for i in range(20)}  # ~400 kB from ~10 kB
    archive = make_zip(tmp_path / "bomb.zip", members)
    with pytest.raises(MidigenError, match="extracted total past .* zip bomb"):
        run_download(url_params(archive), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip"]


# --- source: dir --------------------------------------------------------------------------------


def test_dir_source_nested_with_duplicates(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    for name, data in {
        "b/z.mid": A,
        "a/x/y.MID": B,
        "a/dup.midi": A,
        "c.mid": C,
        "notes.txt": b"x",
        "a/x/dup.mid": B,
    }.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_bytes(data)
    summary = run_download({"source": "dir", "dir": str(corpus)}, tmp_path / "out")
    rows = check_output(tmp_path / "out")
    # sorted relative paths: a/dup.midi, a/x/dup.mid, a/x/y.MID, b/z.mid, c.mid
    assert {r["sha256"]: r["source"] for r in rows} == {
        sha(A): "a/dup.midi",
        sha(B): "a/x/dup.mid",
        sha(C): "c.mid",
    }
    assert summary.duplicates == 2


def test_dir_source_errors(tmp_path: Path) -> None:
    with pytest.raises(MidigenError, match="is not an existing folder"):
        run_download({"source": "dir", "dir": str(tmp_path / "nope")}, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MidigenError, match="no MIDI files"):
        run_download({"source": "dir", "dir": str(tmp_path / "empty")}, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


# --- source: bach -------------------------------------------------------------------------------


def test_bach_source_is_deterministic(tmp_path: Path) -> None:
    params = {"source": "bach", "max_files": 6, "val_fraction": 0.1, "test_fraction": 0.1}
    first = run_download(dict(params, cache=str(tmp_path / "cache1")), tmp_path / "one")
    run_download(dict(params, cache=str(tmp_path / "cache2")), tmp_path / "two")
    rows = check_output(tmp_path / "one")
    assert len(rows) + first.duplicates + first.skipped == 6 and len(rows) >= 4
    assert all(r["source"].startswith("bach/bwv") for r in rows)
    assert (mido.MidiFile(tmp_path / "one" / rows[0]["path"]).length) > 0
    assert tree(tmp_path / "one").keys() == tree(tmp_path / "two").keys()
    assert all(
        (tmp_path / "one" / p).read_bytes() == (tmp_path / "two" / p).read_bytes()
        for p in tree(tmp_path / "one")
    )


# --- source: music21 ----------------------------------------------------------------------------


def test_music21_lists_each_work_once_in_order() -> None:
    ids, duplicates = music21_ids(["beethoven", "mozart", "bach"])
    groups = [i.split("/")[0] for i in ids]
    assert groups == sorted(groups, key=["beethoven", "mozart", "bach"].index)
    beethoven = [i for i in ids if i.startswith("beethoven/")]
    assert beethoven == sorted(beethoven) and "beethoven/opus18no1/movement1.mxl" in beethoven
    assert not any(i.endswith(".krn") for i in beethoven) and duplicates > 0  # .krn of op. 18/1
    assert "bach/bwv26.6" in ids and not any(i.endswith(".rntxt") for i in ids)
    with pytest.raises(MidigenError, match=r"no collection 'schumann' \(it has .*schumann_robert"):
        music21_ids(["schumann"])


def test_music21_source_expands_repeats_and_caches(tmp_path: Path) -> None:
    from music21 import corpus

    params = {
        "source": "music21",
        "collections": ["mozart"],
        "max_files": 2,
        "cache": str(tmp_path / "cache"),
    }
    run_download(params, tmp_path / "one")
    rows = {r["source"]: r for r in check_output(tmp_path / "one")}
    assert sorted(rows) == ["mozart/k155/movement1.mxl", "mozart/k155/movement2.mxl"]
    # movement 2 has repeat marks: played, it lasts longer than written
    played = mido.MidiFile(tmp_path / "one" / rows["mozart/k155/movement2.mxl"]["path"])
    beats = sum(m.time for m in mido.merge_tracks(played.tracks)) / played.ticks_per_beat
    assert beats > corpus.parse("mozart/k155/movement2.mxl").highestTime + 20

    cached = sorted((tmp_path / "cache").rglob("*.json"))
    assert [p.relative_to(cached[0].parents[2]).as_posix() for p in cached] == [
        "mozart/k155/movement1.mxl.json",
        "mozart/k155/movement2.mxl.json",
    ]
    # A second run reads the cache, not music21: a changed cache entry shows in its output.
    entry = json.loads(cached[1].read_text())
    entry["works"][0]["midi"] = base64.b64encode(A).decode()
    cached[1].write_text(json.dumps(entry))
    run_download(params, tmp_path / "two")
    rows = {r["source"]: r for r in check_output(tmp_path / "two")}
    assert rows["mozart/k155/movement2.mxl"]["sha256"] == sha(A)


@pytest.mark.parametrize("times, as_written", [(2, 0), (4, 0), (5, 1)])
def test_a_repeat_past_four_times_is_played_as_written(times: int, as_written: int) -> None:
    """No bar plays more than 4 times in a correct expansion; beyond that the marks are wrong."""
    from music21 import bar, converter, stream

    score = converter.parse("tinynotation: 4/4 c4 d e f g a b c' d' e' f' g'")
    score.makeMeasures(inPlace=True)
    measures = score.getElementsByClass(stream.Measure)
    measures[0].leftBarline = bar.Repeat(direction="start")
    measures[-1].rightBarline = bar.Repeat(direction="end", times=times)
    data, flag = dl._score_midi(score)
    played = mido.MidiFile(file=io.BytesIO(data))
    beats = sum(m.time for m in mido.merge_tracks(played.tracks)) / played.ticks_per_beat
    assert flag == as_written
    assert beats == pytest.approx(12 * (1 if as_written else times), abs=1.5)


def test_a_work_that_fails_is_skipped_with_its_reason(tmp_path: Path, monkeypatch) -> None:
    ids = ["bach/bwv277", "bach/no-such-work"]  # bwv277's repeat marks cannot be expanded
    monkeypatch.setattr(dl, "music21_ids", lambda collections: (ids, 0))
    params = {"source": "music21", "cache": str(tmp_path / "cache")}
    summary = run_download(params, tmp_path / "out")
    assert [r["source"] for r in check_output(tmp_path / "out")] == ["bach/bwv277"]
    assert "1 skipped (skipped.csv), 1 played as written" in str(summary)
    with open(tmp_path / "out" / "skipped.csv", newline="") as f:
        [skipped] = list(csv.DictReader(f))
    assert skipped["source"] == "bach/no-such-work" and "no-such-work" in skipped["reason"]
    assert [p.name for p in (tmp_path / "cache").rglob("*.json")] == ["bwv277.json"]


# --- the CLI ------------------------------------------------------------------------------------


def run_cli(tmp_path: Path, download_params: dict) -> subprocess.CompletedProcess:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["download"] = download_params
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "midigen",
            "download",
            "--out",
            "data/raw",
            "--params",
            "params.yaml",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_end_to_end(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, data in {"a.mid": A, "b.mid": B, "again.mid": A}.items():
        (corpus / name).write_bytes(data)
    result = run_cli(
        tmp_path,
        {
            "source": "dir",
            "dir": str(corpus),
            "max_files": 0,
            "val_fraction": 0.1,
            "test_fraction": 0.1,
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("midigen download: 2 files (train ")
    assert result.stdout.rstrip().endswith("1 duplicates dropped -> data/raw")
    assert len(check_output(tmp_path / "data/raw")) == 2


def test_cli_bad_params(tmp_path: Path) -> None:
    result = run_cli(tmp_path, {"source": "ftp"})
    assert result.returncode == 2 and result.stdout == ""
    assert (
        "midigen download: error: params.yaml: 'download.source' must be one of 'bach', "
        "'music21', 'url', 'dir', got 'ftp'"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_a_missing_manifest_is_one_clear_error(tmp_path):
    with pytest.raises(MidigenError, match=r"manifest\.csv: not found \(run midigen download"):
        read_manifest(tmp_path / "manifest.csv")


def skipped_rows(out: Path) -> dict[str, str]:
    with open(out / "skipped.csv", newline="") as f:
        return {row["source"]: row["reason"] for row in csv.DictReader(f)}


def test_dir_source_keeps_inside_the_folder_and_lists_what_it_skips(tmp_path: Path) -> None:
    outside = tmp_path / "system"
    outside.mkdir()
    (outside / "secret.mid").write_bytes(C)
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.mid").write_bytes(A)
    (corpus / "sub" / "b.mid").write_bytes(B)
    (corpus / "inside.mid").symlink_to(corpus / "sub" / "b.mid")  # stays inside: read
    (corpus / "escape.mid").symlink_to(outside / "secret.mid")
    (corpus / "linked").symlink_to(outside, target_is_directory=True)
    (corpus / "dangling.mid").symlink_to(corpus / "gone.mid")
    os.mkfifo(corpus / "pipe.mid")  # reading it would block forever
    with open(corpus / "huge.mid", "wb") as f:  # sparse: costs no disk
        f.write(b"MThd")
        f.truncate(dl.MAX_MEMBER_BYTES + 1)
    summary = run_download({"source": "dir", "dir": str(corpus)}, tmp_path / "out")
    rows = check_output(tmp_path / "out")
    assert {r["source"] for r in rows} == {"a.mid", "inside.mid"}  # b.mid: its duplicate
    assert sha(C) not in {r["sha256"] for r in rows}
    assert summary.duplicates == 1 and summary.skipped == 5
    secret = (outside / "secret.mid").resolve()
    assert skipped_rows(tmp_path / "out") == {
        "linked": "is a link to a folder (not followed)",
        "dangling.mid": "is a link to a missing file",
        "escape.mid": f"is a link to {secret}, outside the source folder",
        "huge.mid": f"is larger than {dl.MAX_MEMBER_BYTES} bytes",
        "pipe.mid": "is not a regular file",
    }


def test_dir_source_lists_a_file_that_vanishes_while_read(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.mid").write_bytes(A)
    (corpus / "b.mid").write_bytes(B)
    tally = dl.Tally()
    entries = dl._dir_entries(corpus, None, tally)
    assert next(entries) == ("a.mid", A)
    (corpus / "b.mid").unlink()  # after the listing, before its turn
    assert list(entries) == []
    assert tally.skipped == [("b.mid", "vanished while the folder was read")]


def test_dir_stage_gives_no_traceback_for_a_bad_file(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.mid").write_bytes(A)
    (corpus / "escape.mid").symlink_to("/etc/passwd")
    raw = tmp_path / "raw"
    params = json.dumps({"download": {"source": "dir", "dir": str(corpus)}})
    result = subprocess.run(
        [sys.executable, "-m", "midigen", "download", "--params-json", params, "--out", str(raw)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "escape.mid is a link to /etc/passwd, outside the source folder" in result.stderr
    assert "1 skipped (skipped.csv)" in result.stdout
    assert len(list((raw / "midi").iterdir())) == 1


def test_dir_files_up_to_the_cap_are_read_whole_and_each_skip_is_logged(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    """A file of exactly MAX_MEMBER_BYTES is taken with every byte; one more is skipped, and
    the log names it and why."""
    monkeypatch.setattr(dl, "MAX_MEMBER_BYTES", len(A) + 10)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    exact = A + bytes(10)
    (corpus / "exact.mid").write_bytes(exact)
    (corpus / "over.mid").write_bytes(B + bytes(len(A) + 11 - len(B)))
    with caplog.at_level("WARNING"):
        run_download({"source": "dir", "dir": str(corpus)}, tmp_path / "out")
    [row] = check_output(tmp_path / "out")
    assert row["source"] == "exact.mid" and (tmp_path / "out" / row["path"]).read_bytes() == exact
    why = f"is larger than {len(A) + 10} bytes"
    assert skipped_rows(tmp_path / "out") == {"over.mid": why}
    assert f"download.dir: over.mid {why}; skipped" in caplog.messages


def test_split_of_at_the_split_edges() -> None:
    """The first 8 hex digits as a fraction of 2**32: 0x80000000 is exactly 0.5, 0xc0000000
    exactly 0.75; an edge belongs to the split above it."""
    assert split_of("7fffffff" + "0" * 56, val_fraction=0.25, test_fraction=0.5) == "test"
    assert split_of("80000000" + "0" * 56, val_fraction=0.25, test_fraction=0.5) == "val"
    assert split_of("c0000000" + "0" * 56, val_fraction=0.25, test_fraction=0.5) == "train"


def test_a_refused_connection_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on once this closes
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}/songs.zip"
    with pytest.raises(MidigenError) as error:
        run_download({"source": "url", "url": url, "sha256": "0" * 64}, tmp_path / "out")
    assert str(error.value) == f"cannot download {url}: [Errno 111] Connection refused"
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_never_answers_times_out(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(dl, "TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # accepts connections (the backlog) and says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/songs.zip"
        with pytest.raises(MidigenError) as error:
            run_download({"source": "url", "url": url, "sha256": "0" * 64}, tmp_path / "out")
    assert str(error.value) == f"cannot download {url}: timed out"
    assert list(tmp_path.iterdir()) == []


def test_a_score_asked_for_as_written_plays_each_section_once(tmp_path: Path) -> None:
    """download.repeats: written renders Mozart's K. 155/ii without its repeats (as long as
    the score), cached apart from the performed form, and counts none as 'played as written'
    (that count is of works whose marks could not be expanded)."""
    from music21 import corpus

    params = {
        "source": "music21",
        "collections": ["mozart"],
        "max_files": 2,
        "repeats": "written",
        "cache": str(tmp_path / "cache"),
    }
    summary = run_download(params, tmp_path / "out")
    assert "played as written" not in str(summary)
    rows = {r["source"]: r for r in check_output(tmp_path / "out")}
    written = mido.MidiFile(tmp_path / "out" / rows["mozart/k155/movement2.mxl"]["path"])
    beats = sum(m.time for m in mido.merge_tracks(written.tracks)) / written.ticks_per_beat
    assert beats == pytest.approx(corpus.parse("mozart/k155/movement2.mxl").highestTime, abs=1)
    assert [p.name for p in (tmp_path / "cache").iterdir()][0].endswith("-written")


def test_dir_source_skips_a_loop_of_links_and_keeps_a_name_that_is_not_utf8(
    tmp_path: Path,
) -> None:
    """Issue 27: `ln -s b.mid a.mid; ln -s a.mid b.mid` crashed the stage (Python 3.11's
    resolve raises RuntimeError), and so did a file name whose bytes are not UTF-8 (the CSV
    writer refused its surrogates). Now: the loop is skipped with its reason, and the name is
    written with \\xNN escapes."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.mid").symlink_to("b.mid")
    (corpus / "b.mid").symlink_to("a.mid")
    fd = os.open(os.fsencode(corpus) + b"/x\xff.mid", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, A)
    os.close(fd)
    summary = run_download({"source": "dir", "dir": str(corpus)}, tmp_path / "out")
    [row] = check_output(tmp_path / "out")
    assert row["source"] == "x\\xff.mid" and (tmp_path / "out" / row["path"]).read_bytes() == A
    assert summary.skipped == 2
    loop = "is a link in a loop of links"
    assert skipped_rows(tmp_path / "out") in (
        {"a.mid": loop, "b.mid": loop},
        {"a.mid": loop, "b.mid": "could not be read (Too many levels of symbolic links)"},
        {n: "could not be read (Too many levels of symbolic links)" for n in ("a.mid", "b.mid")},
    )  # Python 3.13 raises OSError (ELOOP) where 3.11 raises RuntimeError


LIST_AS_NOBODY = """
import json, os, pwd, sys
from pathlib import Path
from midigen.data import download as dl
if os.geteuid() == 0:  # root lists any folder: become nobody, once everything is imported
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
tally = dl.Tally()
names = [name for name, _ in dl._dir_entries(Path(sys.argv[1]), None, tally)]
print(json.dumps({"names": names, "skipped": tally.skipped}))
"""


def test_a_folder_that_cannot_be_listed_is_listed_as_skipped(tmp_path: Path) -> None:
    """Issue 27: os.walk dropped a folder it could not list, without a word. Seen as a user
    the folder's mode shuts out (as root: the test drops to nobody in a child process)."""
    shared = Path(tempfile.mkdtemp(dir="/tmp"))  # a place nobody can reach
    try:
        shared.chmod(0o755)
        corpus = shared / "corpus"
        (corpus / "locked").mkdir(parents=True)
        (corpus / "a.mid").write_bytes(A)
        (corpus / "locked" / "b.mid").write_bytes(B)
        for folder in (corpus, corpus / "a.mid"):
            folder.chmod(0o755 if folder.is_dir() else 0o644)
        (corpus / "locked").chmod(0o000)
        result = subprocess.run(
            [sys.executable, "-c", LIST_AS_NOBODY, str(corpus)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        listed = json.loads(result.stdout)
        assert listed["names"] == ["a.mid"]
        assert listed["skipped"] == [
            ["locked", "is a folder that could not be listed (Permission denied)"]
        ]
    finally:
        (shared / "corpus" / "locked").chmod(0o755)
        shutil.rmtree(shared)
