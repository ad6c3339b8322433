"""Training: contiguous song streams, exact resume, and DDP (2 processes, gloo) = 1 process."""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from builders import TINY_MODEL, shards_from_songs

from midigen.data.batching import IGNORE, ContiguousBatches, pitch_shift
from midigen.data.corpus import load_shard
from midigen.encodings.catalog import load_scheme
from midigen.encodings.index import Index
from midigen.encodings.scores import Vocab
from midigen.midi.files import Notes
from midigen.models.training import TrainConfig, Trainer, lr_at
from midigen.params import load_params
from midigen.stages import train as train_stage
from midigen.stages.train import model_config

ROOT = Path(__file__).resolve().parents[1]
N_SONGS = 14


def random_song(rng: np.random.Generator) -> Notes:
    n = int(rng.integers(20, 120))
    onset = np.sort(rng.integers(0, 4 * n, n))
    pitch = rng.integers(40, 90, n)
    keys = np.unique(np.stack([onset, pitch], 1), axis=0)
    return Notes(
        keys[:, 0], np.zeros(len(keys), np.int64), keys[:, 1], rng.integers(1, 9, len(keys))
    )


def random_shards(root: Path, count: int, seed: int, **fractions: float) -> Path:
    """Real shards made by the real stages from a folder of `count` small random songs."""
    rng = np.random.default_rng(seed)
    return shards_from_songs(root, [random_song(rng) for _ in range(count)], **fractions)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    return random_shards(root, N_SONGS, 0, val_fraction=0.25, test_fraction=0.1)


def tiny_params(**train) -> dict:
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["model"].update(TINY_MODEL, dropout=0.1)
    params["train"].update(
        {
            "steps": 6,
            "batch_size": 4,
            "warmup_steps": 2,
            "eval_every": 3,
            "checkpoint_every": 3,
            **train,
        }
    )
    return params


def trainer(shards: Path, out: Path, variant: str, params: dict) -> Trainer:
    config = model_config(params, variant, load_scheme(shards).fields, 4)
    return Trainer(config, TrainConfig.from_params(params["train"], params["data"]), shards, out)


# ---- batches ------------------------------------------------------------------------------


def test_rows_stream_whole_songs_in_order(shards):
    shard = load_shard(shards, "train")
    batches = ContiguousBatches(shard, load_scheme(shards), batch_size=3, segment_len=16, seed=1)
    segments = batches.epoch(0)
    tokens = torch.cat([s.tokens for s in segments], 1)
    doc = torch.cat([s.doc for s in segments], 1)
    targets = torch.cat([s.targets for s in segments], 1)
    seen = []
    for row in range(3):
        ids = doc[row][doc[row] >= 0]
        runs = torch.unique_consecutive(ids).tolist()
        assert len(runs) == len(set(runs))  # each song once, contiguous
        for song in runs:
            where = doc[row] == song
            assert tokens[row][where].tolist() == shard.tokens[shard.song(song)].tolist()
            assert targets[row][where].tolist()[:-1] == tokens[row][where].tolist()[1:]
            assert targets[row][where].tolist()[-1] == IGNORE  # never across songs
        seen += runs
    assert sorted(seen) == list(range(len(shard.songs)))
    assert set(batches.epoch(1)[0].doc.flatten().tolist()) - {-1} <= set(
        range(len(shard.songs), 2 * len(shard.songs))
    ), "song ids must be new every epoch"


def test_pitch_shift_moves_notes_only_and_stays_in_range():
    vocab = Vocab(8)
    scheme = Index(vocab)
    tokens = vocab.from_text("<sos><n2><d4><sep><d1><n125><d2><sep><d2><eos>")
    rng = np.random.default_rng(0)
    for _ in range(50):
        shifted = pitch_shift(tokens, scheme, -5, 6, rng)
        notes = (tokens >= vocab.note_base) & (tokens < vocab.duration_base)
        delta = shifted[notes] - tokens[notes]
        assert len(set(delta.tolist())) == 1 and -2 <= delta[0] <= 2
        assert np.array_equal(shifted[~notes], tokens[~notes])


def test_pitch_shift_draws_every_allowed_interval():
    """Pitches 2 and 125 leave room for -2..+2 of the asked -5..+6; a middle-C song the whole
    -5..+6: over 300 songs each interval comes up (1/5 and 1/12 each: a missing one or an
    always-0 shift fails), and in about its share."""
    vocab = Vocab(8)
    scheme = Index(vocab)
    rng = np.random.default_rng(1)
    for text, allowed in (
        ("<sos><n2><d4><sep><d1><n125><d2><sep><d2><eos>", range(-2, 3)),
        ("<sos><n60><d4><sep><d2><eos>", range(-5, 7)),
    ):
        tokens = vocab.from_text(text)
        first = int(np.flatnonzero(tokens >= vocab.note_base)[0])
        draws = [
            int(pitch_shift(tokens, scheme, -5, 6, rng)[first] - tokens[first]) for _ in range(300)
        ]
        counts = np.bincount(np.array(draws) - allowed[0], minlength=len(allowed))
        assert set(draws) == set(allowed)
        assert counts.min() > 300 / len(allowed) / 3  # uniform: no interval is rare


def test_learning_rate_warms_up_then_decays_to_min():
    config = TrainConfig(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(0, config) == pytest.approx(1e-4)
    assert lr_at(9, config) == pytest.approx(1e-3)
    assert lr_at(100, config) == pytest.approx(1e-4)
    assert lr_at(55, config) == pytest.approx(5.5e-4)


def test_the_schedule_peaks_as_warmup_ends_and_reaches_min_at_the_last_step():
    config = TrainConfig(steps=11, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(10, config) == pytest.approx(1e-3)  # the first step after warmup: the peak
    assert lr_at(11, config) == pytest.approx(1e-4)  # one step of decay: all the way down
    no_warmup = TrainConfig(steps=4, lr=1e-3, min_lr=0.0, warmup_steps=0)
    assert [lr_at(s, no_warmup) for s in range(5)] == pytest.approx(
        [
            1e-3,
            1e-3 * (1 + math.cos(math.pi / 4)) / 2,
            5e-4,
            1e-3 * (1 - math.cos(math.pi / 4)) / 2,
            0,
        ]
    )


def test_each_step_runs_at_the_scheduled_rate_times_its_groups_scale(shards, tmp_path):
    """The optimizer steps with lr_at(step) in every group, times memory_lr_scale in the
    memory-steering group (xl_knn's kNN bias and temperature, the relative position table)."""
    run = trainer(shards, tmp_path, "xl_knn", tiny_params(memory_lr_scale=7.0))
    seen = []
    step = run.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append([group["lr"] for group in run.optimizer.param_groups])
        return step(*args, **kwargs)

    run.optimizer.step = recording_step
    for segment in run.train_batches.epoch(0)[:3]:
        run.train_step(segment)
    scales = [group.get("lr_scale", 1.0) for group in run.optimizer.param_groups]
    assert 7.0 in scales
    for number, lrs in enumerate(seen):
        assert lrs == pytest.approx([lr_at(number, run.config) * scale for scale in scales])


@pytest.mark.parametrize("variant", ["xl", "xl_knn"])
def test_each_training_segment_reads_the_memory_the_one_before_left(shards, tmp_path, variant):
    """Contiguous batches exist for this: segment t's forward gets the state segment t-1 left
    (with the XL memory in it), not a fresh one."""
    run = trainer(shards, tmp_path, variant, tiny_params())
    given, forward = [], run.model.forward

    def recording_forward(tokens, bar_pos, doc, state=None):
        given.append(state)
        out = forward(tokens, bar_pos, doc, state)
        given.append(out[2])
        return out

    run.model.forward = recording_forward
    for segment in run.train_batches.epoch(0)[:3]:
        run.train_step(segment)
    received, left = given[0::2], given[1::2]
    assert received[0] is None
    pairs = zip(received[1:], left[:-1], strict=True)
    assert all(got is kept and got.past is not None for got, kept in pairs)


# ---- resume and DDP -----------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["vanilla", "xl", "xl_knn"])
def test_killed_and_resumed_run_ends_with_the_same_weights(shards, tmp_path, variant):
    params = tiny_params()
    straight = trainer(shards, tmp_path / "straight", variant, params)
    straight.run()

    first = trainer(shards, tmp_path / "resumed", variant, params)
    first.run(stop_after=3)  # as if killed after the step-3 checkpoint
    del first
    second = trainer(shards, tmp_path / "resumed", variant, params)
    second.run(resume=True)
    assert second.step == straight.step == 6
    for (name, a), b in zip(
        straight.module.state_dict().items(), second.module.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert straight.history[-1]["val_loss"] == pytest.approx(second.history[-1]["val_loss"])


def train_command(shards: Path, params: dict, out: Path, variant: str = "xl_knn") -> list[str]:
    """`midigen train` as the DAG runs it, with its own metrics and checkpoints beside OUT."""
    return [
        *(sys.executable, "-m", "midigen", "train", "--variant", variant),
        *("--shards", str(shards), "--params-json", json.dumps(params)),
        *("--out", str(out), "--metrics", str(out.parent / f"{out.name}-live")),
        *("--checkpoints", str(out.parent / f"{out.name}-checkpoints")),
    ]


def test_a_killed_stage_resumes_from_its_last_checkpoint(shards, tmp_path):
    """SIGKILL `midigen train` once a checkpoint waits; run it again: it says it resumes and
    ends with the weights and logs of a run never killed, and clears its checkpoints."""
    params = tiny_params(steps=60, checkpoint_every=2, eval_every=20)
    straight = subprocess.run(train_command(shards, params, tmp_path / "straight"), check=True)
    assert straight.returncode == 0
    command = train_command(shards, params, tmp_path / "killed")
    store = tmp_path / "killed-checkpoints"
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(store.rglob("checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0, 0.5))
    job.kill()
    assert job.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model.pt").exists()
    again = subprocess.run([*command, "--log", str(tmp_path / "again.log")], check=True)
    assert again.returncode == 0
    resumed = re.search(r"resuming from step (\d+)", (tmp_path / "again.log").read_text())
    assert resumed and 0 < int(resumed.group(1)) < 60
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    for log in ("train_loss.tsv", "val_loss.tsv"):
        live = Path("plots") / "metrics" / log
        straight_log = (tmp_path / "straight-live" / live).read_text()
        assert straight_log.count("\n") == (61 if log == "train_loss.tsv" else 4)  # + header
        assert (tmp_path / "killed-live" / live).read_text() == straight_log
    assert list(store.rglob("*.pt")) == []


def test_checkpoint_loads_with_weights_only(shards, tmp_path):
    run = trainer(shards, tmp_path / "m", "xl_knn", tiny_params(steps=3))
    run.run()
    run.save_model(tmp_path / "m" / "model.pt")
    for name in ("checkpoint.pt", "model.pt"):
        torch.load(tmp_path / "m" / name, weights_only=True)


def test_stage_trains_one_model_per_seed(shards, tmp_path):
    """train.seed 5, seeds 2: the main model (seed 5) in OUT, seed 6's in OUT/seed-6, each its
    own run from its own seed (the main one equal to a plain seed-5 run), DVCLive for both."""
    params = tiny_params(seed=5, seeds=2, steps=3)
    args = argparse.Namespace(
        variant="xl",
        scheme="index",
        shards=shards,
        out=tmp_path / "xl",
        metrics=tmp_path / "live",
        resume=False,
        checkpoints=tmp_path / "checkpoints",
    )
    summary = train_stage.run(args, params)
    assert "seed 5: train loss" in summary and "seed 6: train loss" in summary
    main = torch.load(tmp_path / "xl" / "model.pt", weights_only=True)["model"]
    other = torch.load(tmp_path / "xl" / "seed-6" / "model.pt", weights_only=True)["model"]
    plain = trainer(shards, tmp_path / "plain", "xl", tiny_params(seed=5, steps=3))
    plain.run()
    for name, weight in plain.module.state_dict().items():
        torch.testing.assert_close(main[name], weight, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(main["tok_emb.weight"], other["tok_emb.weight"])
    assert (tmp_path / "live" / "metrics.json").exists()
    assert (tmp_path / "xl" / "seed-6" / "live" / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["vanilla", "xl_knn"])
def test_torchrun_two_processes_match_one_process(shards, tmp_path, variant):
    params = tiny_params(steps=4)
    params["model"]["dropout"] = 0.0  # the two runs draw different dropout masks otherwise
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    common = ["train", "--variant", variant, "--shards", str(shards), "--params", str(params_file)]
    common += ["--checkpoints", str(tmp_path / "checkpoints")]
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "midigen",
            *common,
            "--out",
            str(tmp_path / "one"),
            "--metrics",
            str(tmp_path / "m1"),
        ],
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            "-m",
            "midigen",
            *common,
            "--out",
            str(tmp_path / "two"),
            "--metrics",
            str(tmp_path / "m2"),
        ],
        capture_output=True,
        text=True,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["model"]
    two = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["model"]
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=1e-5, msg=name)


def test_an_empty_split_is_one_clear_error(shards):
    from midigen.data.corpus import Shard
    from midigen.errors import MidigenError

    empty = Shard(*(np.zeros(0, np.int64) for _ in range(3)), np.zeros(1, np.int64), [])
    with pytest.raises(MidigenError, match="the val split has no songs"):
        ContiguousBatches(empty, load_scheme(shards), 2, 16, split="val")


PAGE_FAULTS_PER_STEP = """
import itertools, resource, sys
from pathlib import Path
import midigen.models.training as train
from midigen.models.transformer import ModelConfig
if sys.argv[1] == "default":
    train.keep_freed_memory = lambda: None  # leave glibc as it is, for comparison
model = ModelConfig(
    vocab_size=int(sys.argv[4]), n_layer=2, d_model=64, d_ff=128, segment_len=256, xl_mem_len=128,
    memory="xl",
)
shards, out = Path(sys.argv[2]), Path(sys.argv[3])
trainer = train.Trainer(model, train.TrainConfig(batch_size=8), shards, out)
segments = itertools.cycle(trainer.train_batches.epoch(0))
for _ in range(30):  # until the heap has grown to what a step needs
    trainer.train_step(next(segments))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    trainer.train_step(next(segments))
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_cpu_training_steps_reuse_freed_memory(shards, tmp_path):
    """Training on the CPU keeps freed memory for the next step (keep_freed_memory): by
    default glibc hands the attention's MB-sized tensors back and every step faults their
    pages in again, zero-filled (~7% of an xl step, bench/train.py)."""
    faults = {}
    for setting in ("default", "training"):
        run = [sys.executable, "-c", PAGE_FAULTS_PER_STEP, setting, str(shards)]
        run += [str(tmp_path / setting), str(load_scheme(shards).fields[0])]
        faults[setting] = int(
            subprocess.run(run, capture_output=True, text=True, check=True).stdout
        )
    assert faults["default"] > 1000, faults  # pages (4 KiB) faulted in per step
    assert faults["training"] < faults["default"] // 10, faults


def test_the_stage_logs_progress_without_a_terminal(shards, tmp_path):
    """Under Snakemake or DVC (no terminal) training says where it is, in its log file and on
    the console: at its start, at every validation and at its end (and every 25 s between,
    tests/test_progress.py)."""
    params = tiny_params(steps=6, eval_every=3)
    log = tmp_path / "train.log"
    run = subprocess.run(
        [*train_command(shards, params, tmp_path / "model"), "--log", str(log)],
        capture_output=True,
        text=True,
        check=True,
    )
    name = re.escape(f"train {tmp_path / 'model'}")  # the model's folder: what is trained
    pattern = (
        name + r": step (\d)/6 \(\d+%\), loss \d+\.\d{3}, tokens/s [\d,]+, "
        r"val_loss \d+\.\d{3}, \d+m\d\ds left"
    )
    for text in (log.read_text(), run.stderr):
        assert f"train {tmp_path / 'model'}: step 0/6 (0%)" in text
        assert [int(step) for step in re.findall(pattern, text)] == [3, 6]
        assert re.search(name + r": 6 step done in \d+m\d\ds", text)


@pytest.mark.parametrize("clip", [0.05, 0.5])
def test_the_optimizer_steps_with_the_gradient_clipped_to_grad_clip(shards, tmp_path, clip):
    """Issue 30: deleting the clip passed every test. On the same first segment, the gradient
    AdamW steps with has norm grad_clip when the raw gradient is larger (it is: unclipped it
    is more than twice either clip), and the weights move by that step alone."""

    def stepped_norm(grad_clip: float) -> float:
        run = trainer(shards, tmp_path / str(grad_clip), "xl", tiny_params(grad_clip=grad_clip))
        seen = []
        step = run.optimizer.step

        def recording_step(*args, **kwargs):
            grads = [p.grad for p in run.module.parameters() if p.grad is not None]
            seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
            return step(*args, **kwargs)

        run.optimizer.step = recording_step
        torch.manual_seed(0)
        run.train_step(run.train_batches.epoch(0)[0])
        return seen[0]

    raw = stepped_norm(1e9)
    assert raw > 2 * max(0.05, 0.5)
    assert stepped_norm(clip) == pytest.approx(clip, rel=1e-4)
