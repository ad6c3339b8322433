"""Setup shared by several test files: a tiny model size, and real shards from MIDI files."""

from __future__ import annotations

from pathlib import Path

from midigen.data.corpus import EncodeConfig, build_shards, encode_chunk
from midigen.data.download import download
from midigen.midi.files import Notes, write_midi
from midigen.params import validate_params

# A model small enough to train or run in a fraction of a second, with every part present.
TINY_MODEL = dict(n_layer=2, n_head=2, d_model=32, d_ff=64, segment_len=32, xl_mem_len=32, knn_k=4)


def shards_from_songs(root: Path, songs: list[Notes], **download_params) -> Path:
    """Write `songs` as MIDI files and run the real download -> encode -> shard stages on them."""
    (root / "midi").mkdir(parents=True)
    for i, song in enumerate(songs):
        (root / "midi" / f"{i}.mid").write_bytes(write_midi(song, 4))
    return shards_via_stages(root, source="dir", dir=str(root / "midi"), **download_params)


def shards_via_stages(
    root: Path, encode: dict | None = None, scheme: str = "index", **download_params
) -> Path:
    """root/raw and root/shards made by the real download -> encode -> shard stages (one
    chunk; `encode` params default to a small vocabulary)."""
    encode = {"steps_per_beat": 4, "max_duration": 8, **(encode or {}), "chunks": [0]}
    encode["schemes"] = [scheme]
    params = validate_params({"download": download_params, "encode": encode}, partial=True)
    download(params["download"], root / "raw")
    config = EncodeConfig.from_params(params["encode"], scheme)
    encode_chunk(root / "raw", 0, 1, config, root / "encoded" / "chunk-0", workers=1)
    flag = params["encode"]["flag_lost_fraction"]
    build_shards([root / "encoded" / "chunk-0"], config, root / "shards", flag)
    return root / "shards"
