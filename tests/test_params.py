"""params.yaml is checked before any stage runs: one message that names the bad key."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from midigen.errors import MidigenError
from midigen.generation.sampling import GenerateConfig
from midigen.models.training import TrainConfig
from midigen.models.transformer import ModelConfig
from midigen.params import default, load_params, schema, validate_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_change(path: str, value):
    params = copy.deepcopy(DEFAULT)
    *parents, last = path.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = value
    return params


def test_default_params_are_valid():
    validate_params(DEFAULT)
    assert load_params(ROOT / "params.yaml") == DEFAULT


@pytest.mark.parametrize(
    "path, value, message",
    [
        (
            "encode.step_per_beat",
            4,
            "unknown key 'encode.step_per_beat' (did you mean 'steps_per_beat'?)",
        ),
        (
            "encode.steps_per_beat",
            "four",
            "'encode.steps_per_beat' must be of type integer, got 'four'",
        ),
        ("encode.steps_per_beat", 0, "'encode.steps_per_beat' must be >= 1, got 0"),
        ("encode.max_duration", 5000, "'encode.max_duration' must be <= 1024, got 5000"),
        (
            "download.source",
            "ftp",
            "'download.source' must be one of 'bach', 'music21', 'url', 'dir', got 'ftp'",
        ),
        ("download.sha256", "abc", "'download.sha256' must be a string matching"),
        ("download.collections", [], "'download.collections': [] should be non-empty"),
        ("encode.chunks", [0, 2], "encode.chunks must list the ids 0..1 once each"),
        ("download.source", "url", "download.url or download.sha256 is not set"),
        ("trian", {}, "unknown key 'trian'"),
    ],
)
def test_bad_values_name_the_key(path, value, message):
    with pytest.raises(MidigenError) as error:
        validate_params(with_change(path, value))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_left_out_keys_get_the_schema_default():
    params = copy.deepcopy(DEFAULT)
    del params["encode"]["max_steps"], params["download"]["val_fraction"]
    filled = validate_params(params)
    assert filled["encode"]["max_steps"] == 65536 and filled["download"]["val_fraction"] == 0.1
    assert filled == DEFAULT


def test_missing_section_is_named():
    params = copy.deepcopy(DEFAULT)
    del params["encode"]
    with pytest.raises(MidigenError, match="missing required key 'encode'"):
        validate_params(params)


def test_partial_params_accept_a_subset_of_sections():
    validate_params({"encode": DEFAULT["encode"]}, partial=True)
    with pytest.raises(MidigenError, match="unknown key 'encode.bogus'"):
        validate_params({"encode": {**DEFAULT["encode"], "bogus": 1}}, partial=True)


def test_stage_refuses_bad_params_before_touching_outputs(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(with_change("encode.steps_per_beat", -1)))
    out = tmp_path / "shards"
    out.mkdir()
    (out / "keep.txt").write_text("old result")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "midigen",
            "shard",
            "--params",
            str(params),
            "--out",
            str(out),
            "--encoded",
            str(tmp_path / "nothing"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "'encode.steps_per_beat' must be >= 1, got -1" in result.stderr
    assert (out / "keep.txt").read_text() == "old result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "shards"]


def _schema_keys():
    return [
        (section, key)
        for section, body in schema()["properties"].items()
        for key in body.get("properties", {})
    ]


def test_every_param_has_one_default_in_the_schema_and_params_yaml_agrees():
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, key in _schema_keys():
        assert "default" in schema()["properties"][section]["properties"][key], f"{section}.{key}"
        assert committed[section][key] == default(section, key), f"{section}.{key}"


@pytest.mark.parametrize(
    ("config", "section"),
    [(ModelConfig, "model"), (TrainConfig, "train"), (GenerateConfig, "generate")],
)
def test_the_dataclasses_take_their_defaults_from_the_schema(config, section):
    params = schema()["properties"][section]["properties"]
    shared = [f for f in dataclasses.fields(config) if f.name in params]
    assert len(shared) >= 8
    for field in shared:
        value = list(field.default) if isinstance(field.default, tuple) else field.default
        assert value == default(section, field.name), field.name
