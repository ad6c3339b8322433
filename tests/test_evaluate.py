"""Evaluate: likelihood metrics over the streamed test split, the repeat probe, and the stage."""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import TINY_MODEL

from midigen.batching import ContiguousBatches
from midigen.corpus import EncodeConfig, Shard, build_shards, encode_chunk, load_shard, load_vocab
from midigen.download import download
from midigen.encoding import Vocab
from midigen.errors import MidigenError
from midigen.evaluate import (
    compare_music,
    continuation_notes,
    evaluate_model,
    repeat_probe,
    repeated,
    score_model,
)
from midigen.model import ModelConfig, MusicTransformer, token_loss
from midigen.params import load_params, validate_params
from midigen.stages import evaluate as stage

ROOT = Path(__file__).resolve().parents[1]
MEMORIES = ("none", "xl", "xl_knn")
BAR = 16  # steps per 4/4 bar at 4 steps per beat


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread than on two (and ~10x faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chorales(tmp_path_factory) -> Path:
    """Shards of 16 bundled Bach chorales (2 in the test split), made by the real stages."""
    root = tmp_path_factory.mktemp("chorales")
    params = load_params(ROOT / "params.yaml")
    download({**params["download"], "max_files": 16, "test_fraction": 0.2}, root / "raw")
    config = EncodeConfig.from_params(params["encode"])
    encode_chunk(root / "raw", 0, 1, config, root / "encoded" / "chunk-0", workers=1)
    build_shards([root / "encoded" / "chunk-0"], config, root / "shards")
    assert len(load_shard(root / "shards", "test").songs) >= 2
    return root / "shards"


def first_songs(shard: Shard, n: int, length: int | None = None) -> Shard:
    """The first n songs of a shard, or only their first `length` tokens (faster tests)."""
    spans = [shard.song(i) for i in range(n)]
    if length is not None:
        spans = [slice(span.start, min(span.stop, span.start + length)) for span in spans]
    return Shard(
        *(
            np.concatenate([a[span] for span in spans])
            for a in (shard.tokens, shard.times, shard.bar_pos)
        ),
        offsets=np.cumsum([0] + [span.stop - span.start for span in spans]),
        songs=shard.songs[:n],
    )


def tiny_model(vocab: Vocab, memory: str, seed: int = 0) -> MusicTransformer:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=len(vocab), **TINY_MODEL, dropout=0.0, memory=memory)
    return MusicTransformer(config).eval()


@pytest.mark.parametrize("memory", MEMORIES)
def test_nll_is_the_mean_token_loss_over_the_same_stream(chorales, memory):
    vocab, shard = load_vocab(chorales), first_songs(load_shard(chorales, "train"), 3, 200)
    model = tiny_model(vocab, memory)
    total, count, hits, state = 0.0, 0, 0, None
    with torch.no_grad():
        for segment in ContiguousBatches(shard, vocab, 2, 32, shuffle=False).epoch(0):
            logits, _, state = model(segment.tokens, segment.bar_pos, segment.doc, state)
            loss, n = token_loss(logits, segment.targets)
            total, count = total + float(loss), count + int(n)
            hits += int((logits.argmax(-1) == segment.targets).sum())
    assert count == len(shard.tokens) - len(shard.songs)  # every token after each <sos>

    metrics = evaluate_model(model, shard, vocab, [0, 128], batch_size=2)
    assert metrics["nll"] == pytest.approx(total / count, rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(hits / count)
    notes = np.count_nonzero(
        (shard.tokens >= vocab.note_base) & (shard.tokens < vocab.duration_base)
    )
    assert metrics["bits_per_note"] == pytest.approx(total / math.log(2) / notes, rel=1e-6)


def test_positions_and_buckets_partition_the_targets(chorales):
    vocab, shard = load_vocab(chorales), first_songs(load_shard(chorales, "train"), 3)
    model = tiny_model(vocab, "xl")
    scores = score_model(model, shard, vocab, batch_size=2)
    for i in range(len(shard.songs)):
        song = np.asarray(shard.tokens[shard.song(i)])
        mine = scores.song == i
        order = np.argsort(scores.position[mine])
        assert scores.position[mine][order].tolist() == list(range(len(song) - 1))
        assert scores.target[mine][order].tolist() == song[1:].tolist()

    starts = [0, 50, 100]
    metrics = evaluate_model(model, shard, vocab, starts, batch_size=2)
    assert list(metrics["nll_by_position"]) == ["0-49", "50-99", "100+"]
    bucket = np.searchsorted(starts, scores.position, side="right") - 1
    weights = np.bincount(bucket, minlength=3)
    by_position = list(metrics["nll_by_position"].values())
    assert np.average(by_position, weights=weights) == pytest.approx(metrics["nll"])

    kinds = vocab.kinds()[scores.target]
    by_type = metrics["loss_by_type"]
    assert set(by_type) == {"note", "duration", "separator", "eos"}
    type_weights = [np.count_nonzero(kinds == k) for k in (1, 2, 3, 0)]
    by_type_values = [by_type[k] for k in ("note", "duration", "separator", "eos")]
    assert np.average(by_type_values, weights=type_weights) == pytest.approx(metrics["nll"])

    late = scores.position >= 32  # segment_len: only memory reaches the song's start
    assert metrics["late_from"] == 32
    assert metrics["late_nll"] == pytest.approx(scores.nll[late].mean())


def test_bad_position_buckets_are_one_clear_error(chorales):
    vocab, shard = load_vocab(chorales), first_songs(load_shard(chorales, "train"), 1)
    for starts in ([], [10, 20], [0, 64, 64]):
        with pytest.raises(MidigenError, match="evaluate.position_buckets"):
            evaluate_model(tiny_model(vocab, "none"), shard, vocab, starts, 1)


# ---- the repeat probe ----------------------------------------------------------------------


def test_repeat_stream_plays_each_song_twice_under_one_song_id(chorales):
    vocab, shard = load_vocab(chorales), first_songs(load_shard(chorales, "train"), 3)
    twice = repeated(shard)
    assert len(twice.songs) == 3
    for i in range(3):
        song, both = shard.song(i), twice.song(i)
        tokens = np.asarray(shard.tokens[song])
        assert np.asarray(twice.tokens[both]).tolist() == [*tokens, *tokens[1:]]
        assert np.asarray(twice.bar_pos[both]).tolist() == [
            *shard.bar_pos[song],
            *shard.bar_pos[song][1:],
        ]
        assert (np.diff(twice.times[both]) >= 0).all()
    segments = ContiguousBatches(twice, vocab, 2, 32, shuffle=False).epoch(0)
    doc = torch.cat([s.doc for s in segments], 1)
    tokens = torch.cat([s.tokens for s in segments], 1)
    for i in range(3):  # one id covers both copies: memories are not cleared between them
        assert tokens[doc == i].tolist() == np.asarray(twice.tokens[twice.song(i)]).tolist()


@pytest.mark.parametrize("memory", ["xl", "xl_knn"])
def test_repeat_probe_first_copy_is_the_plain_evaluation(chorales, memory):
    """With one song per row, the first copy sees exactly what the song alone sees: memory
    never reaches ahead into the second copy."""
    vocab, shard = load_vocab(chorales), first_songs(load_shard(chorales, "train"), 3, 160)
    model = tiny_model(vocab, memory)
    probe = repeat_probe(model, shard, vocab, batch_size=3)
    assert probe["first"] == pytest.approx(score_model(model, shard, vocab, 3).nll.mean(), rel=1e-5)
    assert math.isfinite(probe["second"]) and probe["second"] != probe["first"]


# ---- generated against real music, and the stage ------------------------------------------


def test_continuations_decode_after_their_prompt():
    vocab = Vocab(8)
    prompt = vocab.from_text("<sos><n60><d4><sep><d4>")
    ended = continuation_notes(prompt, vocab.from_text("<n62><d2><sep><d2><eos>"), 4, vocab)
    assert ended.pitch.tolist() == [62] and ended.onset.tolist() == [4]
    stopped = continuation_notes(prompt, vocab.from_text("<n62><d2><n64><d1>"), 4, vocab)
    assert stopped.pitch.tolist() == [62, 64]  # stopped by the length limit: no <eos>
    assert len(continuation_notes(prompt, [], 4, vocab)) == 0
    samples = {
        "steps_per_beat": 4,
        "prompts": [
            {
                "id": "07",
                "prompt_steps": 4,
                "bar_steps": BAR,
                "tokens": {
                    "prompt": prompt.tolist(),
                    "real": vocab.from_text("<n62><d2><eos>").tolist(),
                    "generated": vocab.from_text("<n62><d2><n64>").tolist(),
                },
            }
        ],
    }
    with pytest.raises(MidigenError, match="prompt 07: the generated tokens do not decode"):
        compare_music(samples, vocab)


def write_samples(folder: Path, shard: Shard, variant: str, generated_from_other: bool) -> None:
    """samples.json as `midigen generate` writes it: each prompt is the first 4 bars of a song,
    "real" its rest and "generated" either the same rest or another song's tokens."""
    prompts = []
    for i in range(2):
        tokens = np.asarray(shard.tokens[shard.song(i)]).tolist()
        times = np.asarray(shard.times[shard.song(i)])
        cut = int(np.argmax(times >= 4 * BAR))
        other = np.asarray(shard.tokens[shard.song(1 - i)]).tolist()
        prompts.append(
            {
                "id": f"{i:02d}",
                "prompt_steps": int(times[cut]),
                "bar_steps": BAR,
                "tokens": {
                    "prompt": tokens[:cut],
                    "real": tokens[cut:],
                    "generated": other[1:] if generated_from_other else tokens[cut:],
                },
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    samples = {"variant": variant, "renderer": None, "steps_per_beat": 4, "prompts": prompts}
    (folder / "samples.json").write_text(json.dumps(samples))


def save_model(model: MusicTransformer, path: Path) -> Path:
    torch.save({"model": model.state_dict(), "model_config": asdict(model.config)}, path)
    return path


def stage_args(tmp_path: Path, chorales: Path, model: Path, variant: str) -> argparse.Namespace:
    return argparse.Namespace(
        variant=variant,
        shards=chorales,
        model=model,
        samples=tmp_path / "samples",
        metrics=tmp_path / "metrics" / f"{variant}.json",
        plots=tmp_path / "plots",
    )


PARAMS = validate_params(
    {"evaluate": {"batch_size": 4}, "encode": {"steps_per_beat": 4}}, partial=True
)


def test_stage_writes_metrics_and_plots(chorales, tmp_path):
    vocab = load_vocab(chorales)
    model = save_model(tiny_model(vocab, "xl_knn"), tmp_path / "model.pt")
    write_samples(tmp_path / "samples", load_shard(chorales, "test"), "xl_knn", True)
    summary = stage.run(stage_args(tmp_path, chorales, model, "xl_knn"), PARAMS)
    assert "xl_knn" in summary and "bits/note" in summary

    metrics = json.loads((tmp_path / "metrics" / "xl_knn.json").read_text())
    assert set(metrics) >= {"nll", "perplexity", "bits_per_note", "accuracy", "loss_by_type"}
    assert set(metrics) >= {"nll_by_position", "late_nll", "repeat", "music"}
    assert list(metrics["nll_by_position"])[0] == "0-127"
    music = metrics["music"]
    for kind in ("generated", "real"):
        assert list(music[kind]) == [
            "pitch_class_entropy",
            "scale_consistency",
            "groove_consistency",
            "empty_beat_rate",
            "pitch_range",
        ]
        assert 0.9 <= music[kind]["scale_consistency"] <= 1  # Bach: tonal
    assert music["generated"] != music["real"]  # "generated" is another chorale
    assert all(0 < v < 1 for v in music["overlap"].values()), music["overlap"]

    plots = tmp_path / "plots"
    with open(plots / "nll_by_position.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["bucket"]: pytest.approx(float(r["nll"])) for r in rows} == metrics["nll_by_position"]
    with open(plots / "histograms.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["feature"] for r in rows} == {"pitch", "duration", "ioi", "polyphony"}
    pitch_share = sum(float(r["real"]) for r in rows if r["feature"] == "pitch")
    assert pitch_share == pytest.approx(1.0, abs=1e-4)
    for png in ("nll_by_position.png", "histograms.png"):
        assert (plots / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_identical_continuations_overlap_fully(chorales, tmp_path):
    vocab = load_vocab(chorales)
    model = save_model(tiny_model(vocab, "none"), tmp_path / "model.pt")
    write_samples(tmp_path / "samples", load_shard(chorales, "test"), "vanilla", False)
    stage.run(stage_args(tmp_path, chorales, model, "vanilla"), PARAMS)
    music = json.loads((tmp_path / "metrics" / "vanilla.json").read_text())["music"]
    assert music["overlap"] == {"pitch": 1.0, "duration": 1.0, "ioi": 1.0, "polyphony": 1.0}
    assert music["generated"] == music["real"]


def test_stage_errors_are_one_clear_message(chorales, tmp_path):
    vocab = load_vocab(chorales)
    model = save_model(tiny_model(vocab, "none"), tmp_path / "model.pt")
    args = stage_args(tmp_path, chorales, model, "vanilla")
    with pytest.raises(MidigenError, match="samples.json: not found"):
        stage.run(args, PARAMS)

    write_samples(tmp_path / "samples", load_shard(chorales, "test"), "vanilla", True)
    with pytest.raises(MidigenError, match="holds samples of vanilla, not xl"):
        stage.run(stage_args(tmp_path, chorales, model, "xl"), PARAMS)
    with pytest.raises(MidigenError, match="no shard here"):
        stage.run(stage_args(tmp_path, tmp_path / "nothing", model, "vanilla"), PARAMS)
    with pytest.raises(MidigenError, match="model not found"):
        stage.run(stage_args(tmp_path, chorales, tmp_path / "nothing.pt", "vanilla"), PARAMS)
    xl = save_model(tiny_model(vocab, "xl"), tmp_path / "xl.pt")
    with pytest.raises(MidigenError, match="a model with memory 'xl', not the vanilla variant"):
        stage.run(stage_args(tmp_path, chorales, xl, "vanilla"), PARAMS)
    other_vocab = Vocab(vocab.max_duration, instruments=True)
    wrong = save_model(tiny_model(other_vocab, "none"), tmp_path / "wrong.pt")
    with pytest.raises(
        MidigenError, match="predicts 292 tokens but the shards' vocabulary has 164"
    ):
        stage.run(stage_args(tmp_path, chorales, wrong, "vanilla"), PARAMS)
    eighths = validate_params({"evaluate": {}, "encode": {"steps_per_beat": 8}}, partial=True)
    with pytest.raises(MidigenError, match="steps_per_beat 4 but encode.steps_per_beat is 8"):
        stage.run(args, eighths)

    (tmp_path / "samples" / "samples.json").write_text('{"steps_per_beat": 4, "prompts": [{}]}')
    with pytest.raises(MidigenError, match="prompt 0 has no id, prompt_steps"):
        stage.run(args, PARAMS)
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "plots").exists()
