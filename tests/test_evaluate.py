"""Evaluate: likelihood metrics over the streamed test split, the repeat probe, repeats by reach,
the per-song table, and the stage."""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import TINY_MODEL

from midigen.data.batching import ContiguousBatches
from midigen.data.corpus import EncodeConfig, Shard, build_shards, encode_chunk, load_shard
from midigen.data.download import download
from midigen.encodings import Scheme
from midigen.encodings.catalog import load_scheme
from midigen.encodings.index import Index
from midigen.encodings.scores import Vocab
from midigen.errors import MidigenError
from midigen.evaluation.cache import ORDERS, WEIGHTS
from midigen.evaluation.checks import CHECKS, TrainingIndex
from midigen.evaluation.likelihood import (
    TokenScores,
    check_buckets,
    compare_music,
    continuation_notes,
    evaluate_model,
    likelihood_metrics,
    reach_buckets,
    repeat_distance,
    repeat_probe,
    repeat_scores,
    repeated,
    score_model,
    second_copy,
    song_table,
    with_reach,
    write_plots,
)
from midigen.evaluation.paired import CELLS, REACH, read_song_cells
from midigen.generation.samples import PIECES, PieceFiles, SamplePrompt, Samples, read_samples
from midigen.models.transformer import MEMORY_KINDS, ModelConfig, MusicTransformer, token_loss
from midigen.params import load_params, validate_params
from midigen.stages import evaluate as stage

ROOT = Path(__file__).resolve().parents[1]
MEMORIES = tuple(MEMORY_KINDS)
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
    flag = params["encode"]["flag_lost_fraction"]
    build_shards([root / "encoded" / "chunk-0"], config, root / "shards", flag)
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


def tiny_model(scheme: Scheme, memory: str, seed: int = 0) -> MusicTransformer:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=scheme.fields[0], **TINY_MODEL, dropout=0.0, memory=memory)
    return MusicTransformer(config).eval()


def evaluate(model: MusicTransformer, shard: Shard, scheme: Scheme, starts=(0, 128), batch_size=2):
    """evaluate_model with 4-token contexts and the tiny model's XL reach."""
    return evaluate_model(model, shard, scheme, starts, batch_size, 4, TINY_MODEL["xl_mem_len"])


def hand_scores(song, position, nll=None, **fields) -> TokenScores:
    """TokenScores written out by hand (targets all 0)."""
    song, position = np.array(song), np.array(position)
    nll = np.zeros(len(song)) if nll is None else np.array(nll, dtype=np.float64)
    return TokenScores(nll, np.zeros(len(song), dtype=np.int64), position, song, **fields)


@pytest.mark.parametrize("memory", MEMORIES)
def test_nll_is_the_mean_token_loss_over_the_same_stream(chorales, memory):
    scheme, shard = load_scheme(chorales), first_songs(load_shard(chorales, "train"), 3, 200)
    model = tiny_model(scheme, memory)
    total, count, hits, state = 0.0, 0, 0, None
    with torch.no_grad():
        for segment in ContiguousBatches(shard, scheme, 2, 32, shuffle=False).epoch(0):
            logits, _, state = model(segment.tokens, segment.bar_pos, segment.doc, state)
            loss, n = token_loss(logits, segment.targets)
            total, count = total + float(loss), count + int(n)
            hits += int((logits.argmax(-1) == segment.targets).sum())
    assert count == len(shard.tokens) - len(shard.songs)  # every token after each <sos>

    metrics, _ = evaluate(model, shard, scheme)
    assert metrics["nll"] == pytest.approx(total / count, rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(hits / count)
    notes = np.count_nonzero(
        (shard.tokens >= scheme.vocab.note_base) & (shard.tokens < scheme.vocab.duration_base)
    )
    assert metrics["bits_per_note"] == pytest.approx(total / math.log(2) / notes, rel=1e-6)
    assert metrics["tokens_per_note"] == pytest.approx(count / notes)
    songs = metrics["songs"]  # per song, for comparing schemes on the same songs
    assert songs["sha256"] == [s["sha256"] for s in shard.songs]
    assert sum(songs["nll_sum"]) == pytest.approx(total, rel=1e-6) and sum(songs["notes"]) == notes
    for i, song_notes in enumerate(songs["notes"]):
        tokens = np.asarray(shard.tokens[shard.song(i)])[1:]  # the targets: after <sos>
        assert song_notes == int(scheme.note_counts(tokens).sum())
    interval = metrics["bits_per_note_interval"]  # resampling the 3 songs
    assert interval["mean"] == pytest.approx(metrics["bits_per_note"])
    rates = [n / math.log(2) / k for n, k in zip(songs["nll_sum"], songs["notes"], strict=True)]
    assert min(rates) - 1e-9 <= interval["low"] < interval["high"] <= max(rates) + 1e-9


def test_positions_and_buckets_partition_the_targets(chorales):
    scheme, shard = load_scheme(chorales), first_songs(load_shard(chorales, "train"), 3)
    model = tiny_model(scheme, "xl")
    scores = score_model(model, shard, scheme, batch_size=2)
    for i in range(len(shard.songs)):
        song = np.asarray(shard.tokens[shard.song(i)])
        mine = scores.song == i
        order = np.argsort(scores.position[mine])
        assert scores.position[mine][order].tolist() == list(range(len(song) - 1))
        assert scores.target[mine][order].tolist() == song[1:].tolist()

    starts = [0, 50, 100]
    metrics, table = evaluate(model, shard, scheme, starts)
    assert list(metrics["nll_by_position"]) == ["0-49", "50-99", "100+"]
    bucket = np.searchsorted(starts, scores.position, side="right") - 1
    weights = np.bincount(bucket, minlength=3)
    by_position = list(metrics["nll_by_position"].values())
    assert np.average(by_position, weights=weights) == pytest.approx(metrics["nll"])

    kinds = scheme.vocab.kinds()[scores.target]
    by_type = metrics["loss_by_type"]
    assert set(by_type) == {"note", "duration", "separator", "eos"}
    type_weights = [np.count_nonzero(kinds == k) for k in (1, 2, 3, 0)]
    by_type_values = [by_type[k] for k in ("note", "duration", "separator", "eos")]
    assert np.average(by_type_values, weights=type_weights) == pytest.approx(metrics["nll"])

    late = scores.position >= 32  # segment_len: only memory reaches the song's start
    assert metrics["late_from"] == 32
    assert metrics["late_nll"] == pytest.approx(scores.nll[late].mean())
    assert metrics["early_nll"] == pytest.approx(scores.nll[~late].mean())

    # Each row streams its songs back to back: offsets step by one, modulo the segment.
    for i in range(len(shard.songs)):
        offset = scores.offset[scores.song == i][np.argsort(scores.position[scores.song == i])]
        assert ((offset[1:] - offset[:-1]) % 32 == 1).all() and offset.max() < 32

    # The per-song table holds the same numbers, song by song.
    assert table.songs == tuple(song["sha256"] for song in shard.songs)
    assert table.mean("all") == pytest.approx(metrics["nll"])
    assert table.mean("late") == pytest.approx(metrics["late_nll"])
    lengths = np.diff(shard.offsets) - 1
    for cell in ("all", "repeat_first", "repeat_second"):
        assert table.cell(cell).tokens.tolist() == lengths.tolist()
    assert table.mean("repeat_second") == pytest.approx(metrics["repeat"]["second"])
    reach = metrics["repeat_by_reach"]
    assert list(reach) == list(REACH)
    assert sum(r["tokens"] for r in reach.values()) == len(scores.nll)
    assert np.average(
        [r["nll"] for r in reach.values() if r["tokens"]],
        weights=[r["tokens"] for r in reach.values() if r["tokens"]],
    ) == pytest.approx(metrics["nll"])


def test_bad_position_buckets_are_one_clear_error(chorales):
    scheme, shard = load_scheme(chorales), first_songs(load_shard(chorales, "train"), 1)
    for starts in ([], [10, 20], [0, 64, 64]):
        with pytest.raises(MidigenError, match="evaluate.position_buckets"):
            evaluate(tiny_model(scheme, "none"), shard, scheme, starts, 1)


# ---- the repeat probe ----------------------------------------------------------------------


def test_repeat_stream_plays_each_song_twice_under_one_song_id(chorales):
    scheme, shard = load_scheme(chorales), first_songs(load_shard(chorales, "train"), 3)
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
    segments = ContiguousBatches(twice, scheme, 2, 32, shuffle=False).epoch(0)
    doc = torch.cat([s.doc for s in segments], 1)
    tokens = torch.cat([s.tokens for s in segments], 1)
    for i in range(3):  # one id covers both copies: memories are not cleared between them
        assert tokens[doc == i].tolist() == np.asarray(twice.tokens[twice.song(i)]).tolist()


@pytest.mark.parametrize("memory", ["xl", "xl_knn"])
def test_repeat_probe_first_copy_is_the_plain_evaluation(chorales, memory):
    """With one song per row, the first copy sees exactly what the song alone sees: memory
    never reaches ahead into the second copy."""
    scheme, shard = load_scheme(chorales), first_songs(load_shard(chorales, "train"), 3, 160)
    model = tiny_model(scheme, memory)
    scores, second = repeat_scores(model, shard, scheme, batch_size=3)
    alone = score_model(model, shard, scheme, 3).nll
    assert scores.nll[~second].mean() == pytest.approx(alone.mean(), rel=1e-5)
    assert second.sum() == (~second).sum() == len(alone)
    probe = repeat_probe(model, shard, scheme, batch_size=3)
    assert probe == {"first": scores.nll[~second].mean(), "second": scores.nll[second].mean()}


def test_second_copy_and_its_per_song_sums_have_known_answers():
    """Songs of 4 and 3 tokens played twice: 3 + 3 and 2 + 2 predictions."""
    probe = hand_scores(
        song=[0] * 6 + [1] * 4,
        position=[0, 1, 2, 3, 4, 5, 0, 1, 2, 3],
        nll=[1, 1, 1, 0.5, 0.5, 0.25, 2, 2, 1, 3],
    )
    second = second_copy(probe, np.array([4, 3]))
    assert second.tolist() == [False] * 3 + [True] * 3 + [False] * 2 + [True] * 2
    scores = hand_scores(  # the songs alone: 3 and 2 predictions
        song=[0, 0, 0, 1, 1],
        position=[0, 1, 2, 0, 1],
        nll=[1, 2, 4, 8, 16],
        reach=np.array([0, 1, 3, 0, 2]),
    )
    table = song_table(scores, probe, second, 2, ["a", "b"])
    expected = {  # per song (nll sum, tokens)
        "all": [(7, 3), (24, 2)],
        "early": [(3, 2), (24, 2)],
        "late": [(4, 1), (0, 0)],
        "repeat_first": [(3, 3), (4, 2)],
        "repeat_second": [(1.25, 3), (4, 2)],
        "reach_none": [(1, 1), (8, 1)],
        "reach_segment": [(2, 1), (0, 0)],
        "reach_xl": [(0, 0), (16, 1)],
        "reach_beyond": [(4, 1), (0, 0)],
    }
    assert list(expected) == list(CELLS)
    for cell, songs in expected.items():
        nll_sum, tokens = table.cell(cell)
        assert list(zip(nll_sum.tolist(), tokens.tolist(), strict=True)) == songs, cell
    assert table.mean("repeat_first") == 7 / 5 and table.mean("repeat_second") == 5.25 / 5


# ---- repeats by reach -----------------------------------------------------------------------

# position:     0  1  2  3  4  5  6  7  8  9 10 11 12
SONG = np.array([5, 1, 2, 3, 1, 2, 3, 9, 1, 2, 3, 1, 2])
# The pair ending at each position last ended this many tokens before (0: never); pairs (1, 2)
# end at 2, 5, 9, 12; (2, 3) at 3, 6, 10; (3, 1) at 4, 11.
DISTANCE = [0, 0, 0, 0, 0, 3, 3, 0, 0, 4, 4, 7, 3]


def test_repeat_distance_and_reach_by_hand():
    assert repeat_distance(SONG, 2).tolist() == DISTANCE
    assert repeat_distance(SONG, 3).tolist() == [0] * 6 + [3, 0, 0, 0, 4, 7, 7]
    assert repeat_distance(SONG[:2], 3).tolist() == [0, 0]
    # segments of 8 tokens from position 0, XL memory of 2: a distance up to the offset is in
    # the segment, up to the offset + 2 within XL's reach
    offset = np.arange(len(SONG)) % 8
    reach = reach_buckets(np.array(DISTANCE), offset, 2)
    assert [REACH[r] for r in reach] == [
        *["none"] * 5,
        "segment",  # 5: distance 3 <= offset 5
        "segment",  # 6: 3 <= 6
        "none",
        "none",
        "beyond",  # 9: 4 > offset 1 + 2
        "xl",  # 10: 4 <= offset 2 + 2
        "beyond",  # 11: 7 > 3 + 2
        "segment",  # 12: 3 <= 4
    ]


def test_reach_is_looked_up_in_each_predictions_own_song():
    shard = Shard(
        tokens=np.concatenate([SONG, [7, 7, 7, 7]]),
        times=np.zeros(17),
        bar_pos=np.zeros(17),
        offsets=np.array([0, 13, 17]),
        songs=[{}, {}],
    )
    # both songs in one row: the second one's positions 0, 1, 2 sit at offsets 5, 6, 7
    position = np.concatenate([np.arange(12), np.arange(3)])
    offset = np.concatenate([np.arange(12) % 8, [5, 6, 7]])
    scores = hand_scores(song=[0] * 12 + [1] * 3, position=position, offset=offset)
    reach = with_reach(scores, shard, 2, 2).reach
    assert reach[:12].tolist() == reach_buckets(np.array(DISTANCE[:12]), offset[:12], 2).tolist()
    assert [REACH[r] for r in reach[12:]] == ["none", "none", "segment"]  # (7, 7) at 1, 2


# ---- generated against real music, and the stage ------------------------------------------


def test_continuations_decode_after_their_prompt():
    vocab = Vocab(8)
    scheme = Index(vocab)
    prompt = vocab.from_text("<sos><n60><d4><sep><d4>")
    ended = continuation_notes(prompt, vocab.from_text("<n62><d2><sep><d2><eos>"), 4, scheme)
    assert ended.pitch.tolist() == [62] and ended.onset.tolist() == [4]
    stopped = continuation_notes(prompt, vocab.from_text("<n62><d2><n64><d1>"), 4, scheme)
    assert stopped.pitch.tolist() == [62, 64]  # stopped by the length limit: no <eos>
    assert len(continuation_notes(prompt, [], 4, scheme)) == 0
    samples = as_samples(
        [
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
        ]
    )
    with pytest.raises(MidigenError, match="prompt 07: the generated tokens do not decode"):
        compare_music(samples, scheme, TrainingIndex([]))


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
    as_samples(prompts, variant).write(folder)


def as_samples(prompts: list[dict], variant: str = "vanilla") -> Samples:
    """Samples of prompts given by id, prompt_steps, bar_steps and tokens: what evaluate reads
    (the files, titles and timings, which it does not, filled in)."""
    files = {piece: PieceFiles(f"{piece}.mid", f"{piece}.png", None) for piece in PIECES}
    filled = {"song": "0" * 64, "source": "x", "title": "x", "files": files}
    prompts_ = tuple(SamplePrompt(**{**filled, **p}) for p in prompts)
    return Samples(variant, "index", None, 4, 1.0, 1.0, 512, prompts_)


def save_model(model: MusicTransformer, path: Path) -> Path:
    torch.save({"model": model.state_dict(), "model_config": asdict(model.config)}, path)
    return path


def stage_args(tmp_path: Path, chorales: Path, model: Path, variant: str) -> argparse.Namespace:
    return argparse.Namespace(
        variant=variant,
        scheme="index",
        shards=chorales,
        model=model,
        samples=tmp_path / "samples",
        metrics=tmp_path / "metrics" / f"{variant}.json",
        plots=tmp_path / "plots",
    )


PARAMS = validate_params(
    {
        "evaluate": {"batch_size": 4},
        "encode": {"steps_per_beat": 4},
        "model": {"xl_mem_len": TINY_MODEL["xl_mem_len"]},
        "train": {"seed": 0, "seeds": 1},
    },
    partial=True,
)


def test_stage_writes_metrics_and_plots(chorales, tmp_path):
    scheme = load_scheme(chorales)
    model = save_model(tiny_model(scheme, "xl_knn"), tmp_path / "model.pt")
    write_samples(tmp_path / "samples", load_shard(chorales, "test"), "xl_knn", True)
    summary = stage.run(stage_args(tmp_path, chorales, model, "xl_knn"), PARAMS)
    assert "xl_knn" in summary and "bits/note" in summary

    metrics = json.loads((tmp_path / "metrics" / "xl_knn.json").read_text())
    assert set(metrics) >= {"nll", "perplexity", "bits_per_note", "accuracy", "loss_by_type"}
    assert set(metrics) >= {"nll_by_position", "early_nll", "late_nll", "repeat", "music"}
    assert list(metrics["nll_by_position"])[0] == "0-127"
    assert metrics["repeat_ngram"] == 8 and metrics["xl_mem_len"] == TINY_MODEL["xl_mem_len"]
    assert list(metrics["repeat_by_reach"]) == ["none", "segment", "xl", "beyond"]
    music = metrics["music"]
    assert music["prompts"] == 2
    for kind in ("generated", "real"):
        assert list(music[kind]) == [
            "pitch_class_entropy",
            "scale_consistency",
            "groove_consistency",
            "empty_beat_rate",
            "pitch_range",
        ]
        scale = music[kind]["scale_consistency"]
        assert 0.9 <= scale["low"] <= scale["mean"] <= scale["high"] <= 1  # Bach: tonal
    assert music["generated"] != music["real"]  # "generated" is another chorale
    for kind in ("generated", "real"):
        assert list(music["checks"][kind]) == list(CHECKS)
    reals = [p.tokens["real"] for p in read_samples(tmp_path / "samples").prompts]
    ending = np.mean([len(real) <= 512 for real in reals])  # <eos> within the length limit
    assert music["checks"]["real"]["ends"]["mean"] == ending
    assert 0 < metrics["bits_per_second"] < metrics["bits_per_note"] * 20
    for overlap in music["overlap"].values():
        assert 0 < overlap["low"] <= overlap["mean"] <= overlap["high"] < 1, music["overlap"]

    songs = read_song_cells(tmp_path / "plots" / "songs.csv")
    test = load_shard(chorales, "test")
    assert songs.songs == tuple(song["sha256"] for song in test.songs)
    cache = metrics["copy_cache"]  # the model plus a copy cache fit on validation
    assert cache["order"] in ORDERS and cache["weight"] in WEIGHTS and cache["val_nll"] > 0
    cached = read_song_cells(tmp_path / "plots" / "cache" / "songs.csv")
    assert cached.songs == songs.songs and np.array_equal(cached.tokens, songs.tokens)
    assert cached.mean("all") == pytest.approx(cache["nll"])
    assert cached.mean("repeat_second") == pytest.approx(cache["repeat"]["second"])
    assert cached.mean("repeat_second") < songs.mean("repeat_second")  # a whole song to copy
    assert songs.mean("all") == pytest.approx(metrics["nll"])
    assert songs.mean("repeat_second") == pytest.approx(metrics["repeat"]["second"])
    for name, reach in metrics["repeat_by_reach"].items():
        assert songs.cell(f"reach_{name}").tokens.sum() == reach["tokens"]

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


def test_stage_scores_every_training_seed(chorales, tmp_path):
    """train.seed 3, seeds 2: the main model (seed 3) in the model's folder, seed 4's in
    seed-4/; each gets its own NLL and songs.csv, and a missing one is named."""
    scheme = load_scheme(chorales)
    models = [tiny_model(scheme, "xl", seed=s) for s in (3, 4)]
    main = save_model(models[0], tmp_path / "model.pt")
    write_samples(tmp_path / "samples", load_shard(chorales, "test"), "xl", True)
    params = copy.deepcopy(PARAMS)
    params["train"] |= {"seed": 3, "seeds": 2}
    args = stage_args(tmp_path, chorales, main, "xl")
    with pytest.raises(MidigenError, match=r"seed-4/model\.pt: model not found"):
        stage.run(args, params)
    (tmp_path / "seed-4").mkdir()
    save_model(models[1], tmp_path / "seed-4" / "model.pt")
    stage.run(args, params)

    metrics = json.loads((tmp_path / "metrics" / "xl.json").read_text())
    first, second = metrics["seeds"]
    assert (first["seed"], first["folder"]) == (3, "")
    assert (second["seed"], second["folder"]) == (4, "seed-4")
    assert first["nll"] == metrics["nll"]
    test = load_shard(chorales, "test")
    alone = evaluate_model(models[1], test, scheme, (0, 128, 256, 512, 1024), 4, 8, 32)[0]
    assert second["nll"] == pytest.approx(alone["nll"]) and second["nll"] != first["nll"]
    assert second["repeat"] == pytest.approx(alone["repeat"])
    songs = read_song_cells(tmp_path / "plots" / "seed-4" / "songs.csv")
    assert songs.mean("all") == pytest.approx(second["nll"])


def test_identical_continuations_overlap_fully(chorales, tmp_path):
    scheme = load_scheme(chorales)
    model = save_model(tiny_model(scheme, "none"), tmp_path / "model.pt")
    write_samples(tmp_path / "samples", load_shard(chorales, "test"), "vanilla", False)
    stage.run(stage_args(tmp_path, chorales, model, "vanilla"), PARAMS)
    music = json.loads((tmp_path / "metrics" / "vanilla.json").read_text())["music"]
    assert list(music["overlap"]) == ["pitch", "duration", "ioi", "polyphony"]
    for overlap in music["overlap"].values():
        assert overlap == pytest.approx({"mean": 1.0, "low": 1.0, "high": 1.0})
    assert music["generated"] == music["real"]


def test_stage_errors_are_one_clear_message(chorales, tmp_path):
    scheme = load_scheme(chorales)
    model = save_model(tiny_model(scheme, "none"), tmp_path / "model.pt")
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
    xl = save_model(tiny_model(scheme, "xl"), tmp_path / "xl.pt")
    with pytest.raises(MidigenError, match="a model with memory 'xl', not the vanilla variant"):
        stage.run(stage_args(tmp_path, chorales, xl, "vanilla"), PARAMS)
    other_vocab = Index(Vocab(scheme.vocab.max_duration, instruments=True))
    wrong = save_model(tiny_model(other_vocab, "none"), tmp_path / "wrong.pt")
    with pytest.raises(
        MidigenError, match="predicts 292 tokens but the shards' vocabulary has 164"
    ):
        stage.run(stage_args(tmp_path, chorales, wrong, "vanilla"), PARAMS)
    eighths = MusicTransformer(replace(tiny_model(scheme, "none").config, steps_per_beat=8))
    eighths = save_model(eighths, tmp_path / "eighths.pt")
    with pytest.raises(
        MidigenError, match="eighths.pt was trained with steps_per_beat 8 but .* on 4"
    ):
        stage.run(stage_args(tmp_path, chorales, eighths, "vanilla"), PARAMS)
    longer = validate_params({**PARAMS, "model": {"xl_mem_len": 64}}, partial=True)
    with pytest.raises(MidigenError, match="trained with xl_mem_len 32 but model.xl_mem_len is 64"):
        stage.run(args, longer)

    (tmp_path / "samples" / "samples.json").write_text(json.dumps({**TOP, "prompts": [{}]}))
    with pytest.raises(MidigenError, match="prompt 0 has no id, song, source"):
        stage.run(args, PARAMS)
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "plots").exists()


def test_music_comparison_by_hand():
    """Two prompts (C for a beat, then silence to step 4); hand-computed statistics and
    histogram overlaps, averaged over the prompts (an undefined one left out)."""
    vocab = Vocab(8)
    scheme = Index(vocab)
    prompt = vocab.from_text("<sos><n60><d4><sep><d4>").tolist()
    c_then = {  # a continuation: the C again at step 4, then another note at step 8
        pitch: vocab.from_text(f"<n60><d4><sep><d4><n{pitch}><d4><sep><d4><eos>").tolist()
        for pitch in (64, 67)
    }
    short_c_sharp = vocab.from_text("<n61><d2><sep><d8><eos>").tolist()
    samples = as_samples(
        [
            {
                "id": "00",
                "prompt_steps": 4,
                "bar_steps": 16,
                "tokens": {"prompt": prompt, "real": c_then[64], "generated": c_then[64]},
            },
            {
                "id": "01",
                "prompt_steps": 4,
                "bar_steps": 16,
                "tokens": {"prompt": prompt, "real": c_then[67], "generated": short_c_sharp},
            },
        ]
    )
    metrics, counts = compare_music(samples, scheme, TrainingIndex([]))
    assert metrics["prompts"] == 2
    mean = {
        group: {k: v["mean"] for k, v in metrics[group].items()}
        for group in metrics
        if group not in ("prompts", "checks")
    }
    # real: C+E and C+G, each two pitch classes half the notes each (1 bit), 4 and 7 semitones
    assert mean["real"]["pitch_class_entropy"] == 1.0 and mean["real"]["pitch_range"] == 5.5
    # generated: C+E (1 bit, 4 semitones), then one C# (0 bits, 0 semitones)
    assert mean["generated"]["pitch_class_entropy"] == 0.5
    assert mean["generated"]["pitch_range"] == 2.0
    assert mean["real"]["scale_consistency"] == mean["generated"]["scale_consistency"] == 1.0
    assert mean["real"]["empty_beat_rate"] == 0.0  # every beat from step 4 to 12 sounds
    assert mean["real"]["groove_consistency"] is None  # all onsets in one bar: undefined
    # overlaps: prompt 0 identical (1); prompt 1 disjoint pitches and durations (0), its C#
    # has no IOI (left out), one voice at every sounding step in both (1)
    assert mean["overlap"] == {"pitch": 0.5, "duration": 0.5, "ioi": 1.0, "polyphony": 1.0}
    assert metrics["overlap"]["pitch"]["low"] == 0.0 and metrics["overlap"]["pitch"]["high"] == 1.0
    assert counts["real"]["pitch"][[60, 64, 67]].tolist() == [2, 1, 1]
    assert counts["generated"]["duration"][[2, 4]].tolist() == [1, 2]


def test_plot_tables_by_hand(tmp_path):
    """histograms.csv: shares of each histogram over the bins either side uses; a side with
    nothing (no generated notes) has shares 0, not NaN; a feature neither side has, no rows."""

    def hist(*values):
        return np.array(values, dtype=np.int64)

    counts = {
        "real": {"pitch": hist(0, 1, 3, 0), "duration": hist(2, 2), "ioi": hist(0, 5),
                 "polyphony": hist(0, 0, 0)},
        "generated": {"pitch": hist(0, 0, 0, 0), "duration": hist(0, 4), "ioi": hist(0, 1),
                      "polyphony": hist(0, 0, 0)},
    }  # fmt: skip
    write_plots(tmp_path, "xl", {"0-127": 1.5, "128-255": 1.25}, counts)
    with open(tmp_path / "histograms.csv") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["feature", "bin", "real", "generated"],
        ["pitch", "1", "0.25", "0"],
        ["pitch", "2", "0.75", "0"],
        ["duration", "0", "0.5", "0"],
        ["duration", "1", "0.5", "1"],
        ["ioi", "1", "1", "1"],
    ]  # polyphony: neither side has any, no rows
    with open(tmp_path / "nll_by_position.csv") as f:
        assert list(csv.reader(f)) == [["bucket", "nll"], ["0-127", "1.5"], ["128-255", "1.25"]]


def test_metric_edge_cases_by_hand(tmp_path):
    """Buckets one token wide are allowed; no predictions is one clear error; predictions
    without a note have no bits per note; a context whose repeat lies exactly at the segment
    offset is inside the segment."""
    check_buckets([0, 1, 2])
    vocab = Vocab(max_duration=8)
    scheme = Index(vocab)
    nothing = TokenScores(*(np.zeros(0, dtype=np.int64) for _ in range(4)))
    with pytest.raises(MidigenError) as error:
        likelihood_metrics(nothing, scheme, [0], np.zeros(0))
    assert str(error.value) == "nothing to evaluate: the test split has no tokens to predict"
    durations = TokenScores(
        nll=np.array([1.0, 2.0]), target=np.array([vocab.duration(1)] * 2),
        position=np.array([0, 1]), song=np.array([0, 0]),
    )  # fmt: skip
    metrics = likelihood_metrics(durations, scheme, [0, 1], seconds=np.array([1.5]))
    assert math.isnan(metrics["bits_per_note"]) and metrics["nll"] == 1.5
    assert metrics["bits_per_second"] == pytest.approx(3.0 / math.log(2) / 1.5)
    assert metrics["nll_by_position"] == {"0-0": 1.0, "1+": 2.0}
    distance, offset = np.array([0, 3, 4, 9, 10]), np.array([3, 3, 3, 3, 3])
    assert reach_buckets(distance, offset, xl_mem_len=6).tolist() == [0, 1, 2, 2, 3]


def test_repeated_songs_keep_each_songs_times():
    """Two songs each played twice: the second copy's times continue from the first's end."""
    shard = Shard(
        tokens=np.array([1, 10, 2, 1, 20, 21, 2]),
        times=np.array([0, 0, 4, 0, 0, 2, 6]),
        bar_pos=np.zeros(7, dtype=np.int64),
        offsets=np.array([0, 3, 7]),
        songs=[{"sha256": "a"}, {"sha256": "b"}],
    )
    twice = repeated(shard)
    assert twice.offsets.tolist() == [0, 5, 12]
    assert twice.tokens.tolist() == [1, 10, 2, 10, 2, 1, 20, 21, 2, 20, 21, 2]
    assert twice.times.tolist() == [0, 0, 4, 4, 8, 0, 0, 2, 6, 6, 8, 12]


PROMPT = {"id": "00", "prompt_steps": 4, "bar_steps": 16, "tokens": dict.fromkeys(PIECES, [])}


TOP = {
    "variant": "vanilla",
    "scheme": "index",
    "renderer": None,
    "steps_per_beat": 4,
    "seconds": 1.0,
    "tokens_per_s": 1.0,
    "length": 512,
}
NOT_SAMPLES = (
    "not a samples file (needs variant, scheme, renderer, steps_per_beat, seconds, "
    "tokens_per_s, length, prompts)"
)


@pytest.mark.parametrize(
    ("samples", "problem"),
    [
        ([], NOT_SAMPLES),
        ({"prompts": []}, NOT_SAMPLES),
        (
            {**TOP, "prompts": [{"id": "p7", "tokens": {"prompt": []}}]},
            "prompt p7 has no song, source, title, prompt_steps, bar_steps, files, "
            "tokens.real, tokens.generated, files.prompt.mid, files.prompt.png, "
            "files.prompt.wav, files.real.mid, files.real.png, files.real.wav, "
            "files.generated.mid, files.generated.png, files.generated.wav",
        ),
        (
            {**TOP, "prompts": [{k: v for k, v in asdict(as_samples([PROMPT]).prompts[0]).items()
                                 if k != "files"}]},
            "prompt 00 has no files, files.prompt.mid, files.prompt.png, files.prompt.wav, "
            "files.real.mid, files.real.png, files.real.wav, files.generated.mid, "
            "files.generated.png, files.generated.wav",
        ),
    ],
)  # fmt: skip
def test_a_samples_file_lacking_what_is_read_is_named(tmp_path, samples, problem):
    """One reader, for evaluate and the report: every key the generate stage writes."""
    (tmp_path / "samples.json").write_text(json.dumps(samples))
    with pytest.raises(MidigenError) as error:
        read_samples(tmp_path)
    assert str(error.value) == f"{tmp_path / 'samples.json'}: {problem}"


def test_samples_read_back_as_written(tmp_path):
    samples = as_samples([PROMPT, {**PROMPT, "id": "01"}], "xl")
    samples.write(tmp_path)
    assert read_samples(tmp_path) == samples


def test_continuation_notes_keep_their_instruments():
    vocab = Vocab(max_duration=8, instruments=True)
    scheme = Index(vocab)
    prompt = vocab.from_text("<sos><i5><n60><d2><sep><d2>")
    continuation = vocab.from_text("<i7><n62><d1><sep><d1><eos>")
    added = continuation_notes(prompt, continuation, prompt_steps=2, scheme=scheme)
    assert added.onset.tolist() == [2] and added.program.tolist() == [7]
    assert added.pitch.tolist() == [62] and added.duration.tolist() == [1]
