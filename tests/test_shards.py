"""The shard stage streams: chunks merged in hash order song by song into .npy files written
piece by piece. What it writes must not depend on how the corpus was cut into chunks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import symusic

from midigen.data.corpus import EncodeConfig, NpyAppender, build_shards, chunk_of, encode_chunk
from midigen.data.download import download, read_manifest
from midigen.errors import MidigenError
from midigen.midi.files import Notes, write_midi
from midigen.params import validate_params


def random_song(rng: np.random.Generator) -> Notes:
    n = int(rng.integers(5, 60))
    onset = np.sort(rng.integers(0, 4 * n, n))
    return Notes(onset, np.zeros(n, np.int64), rng.integers(40, 90, n), rng.integers(1, 8, n))


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, dict]:
    """24 random songs downloaded from a folder: data/raw and the validated params."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "midi").mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        (root / "midi" / f"{i}.mid").write_bytes(write_midi(random_song(rng), 4))
    params = validate_params(
        {
            "download": {"source": "dir", "dir": str(root / "midi"), "test_fraction": 0.2},
            "encode": {"steps_per_beat": 4, "max_duration": 8, "bpe": {"merges": 16}},
        },
        partial=True,
    )
    download(params["download"], root / "raw")
    return root / "raw", params


def shards(raw: Path, params: dict, scheme: str, chunks: int, out: Path) -> Path:
    config = EncodeConfig.from_params(params["encode"], scheme)
    folders = [out / "encoded" / f"chunk-{i}" for i in range(chunks)]
    for i, folder in enumerate(folders):
        encode_chunk(raw, i, chunks, config, folder, workers=1)
    build_shards(folders, config, out / "shards", params["encode"]["flag_lost_fraction"])
    return out / "shards"


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.*"))}


@pytest.mark.parametrize("scheme", ["index", "codebook", "bpe"])
def test_shards_do_not_depend_on_the_chunks(raw, tmp_path, scheme):
    """One chunk or five: byte-identical shards (arrays, songs.csv, stats.json, scheme.json),
    for flat rows, rows of three fields, and merges learned while streaming."""
    raw_dir, params = raw
    sizes = {chunk_of(row["sha256"], 5) for row in read_manifest(raw_dir / "manifest.csv")}
    assert len(sizes) == 5  # every one of the five chunks has songs
    one = files_of(shards(raw_dir, params, scheme, 1, tmp_path / "one"))
    five = files_of(shards(raw_dir, params, scheme, 5, tmp_path / "five"))
    assert one == five
    test = np.load(tmp_path / "one" / "shards" / "test" / "tokens.npy")
    offsets = np.load(tmp_path / "one" / "shards" / "test" / "offsets.npy")
    assert offsets[0] == 0 and offsets[-1] == len(test) and len(offsets) > 2


def test_a_chunk_out_of_hash_order_is_one_clear_error(raw, tmp_path):
    raw_dir, params = raw
    config = EncodeConfig.from_params(params["encode"])
    folder = tmp_path / "chunk-0"
    encode_chunk(raw_dir, 0, 1, config, folder, workers=1)
    lines = (folder / "songs.csv").read_text().splitlines()
    (folder / "songs.csv").write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]))
    with pytest.raises(MidigenError, match="songs not in hash order \\(run encode again\\)"):
        build_shards([folder], config, tmp_path / "shards", 0.2)
    assert not (tmp_path / "shards").exists()  # nothing half-written


@pytest.mark.parametrize(
    "pieces", [[], [np.arange(5)], [np.arange(3), np.zeros(0), np.arange(7) * 9]]
)
@pytest.mark.parametrize("row", [(), (3,)])
def test_an_npy_written_piece_by_piece_loads_as_the_whole(tmp_path, pieces, row):
    pieces = [np.resize(p, (len(p), *row)) for p in pieces]
    appender = NpyAppender(tmp_path / "a.npy", np.int32)
    appender.open()
    for piece in pieces:
        appender.append(piece)
    appender.close()
    loaded = np.load(tmp_path / "a.npy")
    expected = np.concatenate(pieces).astype(np.int32) if pieces else np.zeros(0, np.int32)
    assert loaded.dtype == np.int32 and np.array_equal(loaded, expected)
    assert np.array_equal(np.load(tmp_path / "a.npy", mmap_mode="r"), expected)


def test_the_scale_benchmark_runs_the_real_stages_on_synthetic_files(tmp_path):
    """bench/scale.py on 30 synthetic files: multi-track songs (a drum track in most) that the
    real download -> encode -> shard stages (as `midigen` commands) turn into shards holding
    every file they kept, with the peak memory of each stage measured."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    result = subprocess.run(
        [sys.executable, "scale.py", "--files", "30", "--chunk-files", "10"]
        + ["--work", str(tmp_path)],
        cwd=bench,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores = [symusic.Score(str(p)) for p in sorted((tmp_path / "midi").rglob("*.mid"))]
    assert len(scores) == 30 and np.mean([len(s.tracks) for s in scores]) > 4
    assert sum(any(t.is_drum for t in s.tracks) for s in scores) > 15
    row = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert row["files"] == 30 and row["chunks"] == 3 and row["songs"] > 25
    shards = tmp_path / "run-30" / "data" / "shards" / "index"
    offsets = [np.load(shards / split / "offsets.npy") for split in ("train", "val", "test")]
    assert sum(len(o) - 1 for o in offsets) == row["songs"]
    assert sum(int(o[-1]) for o in offsets) == row["tokens"]
    assert all(row[f"{stage}_mib"] > 0 for stage in ("download", "encode", "shard"))
