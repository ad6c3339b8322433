"""Every bundled Bach chorale downloads, encodes, and round-trips to the same quantized notes."""

from __future__ import annotations

from pathlib import Path

import pytest

from midigen.data.corpus import EncodeConfig, roundtrip_corpus
from midigen.data.download import download, read_manifest
from midigen.params import load_params

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chorales(tmp_path_factory) -> Path:
    """The default download (all chorales, ~35 s on 2 cores)."""
    out = tmp_path_factory.mktemp("bach") / "raw"
    summary = download(load_params(ROOT / "params.yaml")["download"], out)
    assert summary.skipped == 0
    return out


def test_all_chorales_are_downloaded(chorales):
    rows = read_manifest(chorales / "manifest.csv")
    assert 340 <= len(rows) <= 371  # 371 in music21's list, less exact duplicates
    assert {r["split"] for r in rows} == {"train", "val", "test"}


def test_all_chorales_round_trip_exactly(chorales):
    config = EncodeConfig.from_params(load_params(ROOT / "params.yaml")["encode"])
    checked, mismatches, skipped = roundtrip_corpus(chorales, config, workers=2)
    assert (mismatches, skipped) == ([], 0)
    assert checked == len(read_manifest(chorales / "manifest.csv"))
