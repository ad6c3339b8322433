"""What no stage may do with the test split: fit on it, learn from it, choose by it.

Each stage that fits something is run twice on shards that differ only in their test split
(its songs replaced by the validation split's), and what it fits must come out the same: the
trained weights and validation losses (train), the copy cache's order and weight and the
copying index (evaluate), the n-gram counts (baselines). A stage that read the test split
for any of these, whichever line did it, fails here.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_evaluate import PARAMS, save_model, stage_args, tiny_model, write_samples
from test_train import random_shards, tiny_params, trainer

from midigen.data.corpus import load_shard
from midigen.encodings.catalog import load_scheme
from midigen.stages import evaluate as evaluate_stage


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, Path]:
    """Real shards of random songs, and a copy whose test split holds other songs."""
    root = tmp_path_factory.mktemp("splits")
    original = random_shards(root, 40, 7, val_fraction=0.2, test_fraction=0.2)
    other = root / "other-test"
    shutil.copytree(original, other)
    shutil.rmtree(other / "test")
    shutil.copytree(original / "val", other / "test")
    before, after = (load_shard(s, "test") for s in (original, other))
    assert before.songs != after.songs and len(after.songs) >= 2
    return original, other


def test_training_never_reads_the_test_split(shards, tmp_path):
    params = tiny_params()
    runs = []
    for i, folder in enumerate(shards):  # one after the other: a trainer seeds torch when made
        runs.append(trainer(folder, tmp_path / f"run-{i}", "xl_knn", params))
        runs[-1].run()
    weights = [run.module.state_dict() for run in runs]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    losses = [[h.get("val_loss") for h in run.history] for run in runs]
    assert losses[0] == losses[1] and any(losses[0])


def test_evaluate_fits_its_cache_and_indexes_copying_without_the_test_split(shards, tmp_path):
    """The same model and samples, scored on two test splits: the test NLL moves, but the
    copy cache (fit on validation) and the copying checks (against training) do not."""
    original, other = shards
    scheme = load_scheme(original)
    model = save_model(tiny_model(scheme, "xl"), tmp_path / "model.pt")
    write_samples(tmp_path / "samples", load_shard(original, "test"), "xl", True)
    metrics = []
    for i, folder in enumerate(shards):
        args = stage_args(tmp_path / f"eval-{i}", folder, model, "xl")
        args.samples = tmp_path / "samples"
        evaluate_stage.run(args, copy.deepcopy(PARAMS))
        metrics.append(json.loads(args.metrics.read_text()))
    assert metrics[0]["nll"] != metrics[1]["nll"]  # the test split did change
    for key in ("order", "weight", "val_nll"):
        assert metrics[0]["copy_cache"][key] == metrics[1]["copy_cache"][key]
    assert metrics[0]["music"]["checks"] == metrics[1]["music"]["checks"]
