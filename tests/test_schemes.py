"""Every flat scheme as a branch of the pipeline, on real chorales through the real stages:
encode and shard (bpe learning its merges on the training split only), the grammar's steps
against the stored ones, training, generation that always decodes, evaluation by bits per note;
and the LSTM variant through the same stages."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import TINY_MODEL, shards_via_stages

from midigen.data.batching import IGNORE
from midigen.data.corpus import load_shard
from midigen.encodings import decode_song, whole_rows
from midigen.encodings.bpe import BPE
from midigen.encodings.catalog import load_scheme
from midigen.errors import MidigenError
from midigen.evaluation.likelihood import evaluate_model
from midigen.generation.prompts import split_song
from midigen.generation.sampling import GenerateConfig, generate
from midigen.models.kernels import MASKED
from midigen.models.transformer import embed_rows, token_loss
from midigen.models.variants import build_model, load_trained, variant_config
from midigen.params import load_params, validate_params
from midigen.stages import evaluate as evaluate_stage
from midigen.stages import generate as generate_stage
from midigen.stages import train as train_stage
from midigen.stages.branch import shards_of

ROOT = Path(__file__).resolve().parents[1]
FLAT = ("index", "bpe", "events", "remi")
SCHEMES = (*FLAT, "codebook")  # codebook: rows of three fields
MERGED = ("events+bpe", "remi+bpe")  # events and remi with merges in their own section
PARAMS = load_params(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """24 bundled chorales downloaded once; each scheme encodes them on its own."""
    root = tmp_path_factory.mktemp("index")
    shards_via_stages(root, PARAMS["encode"], "index", **DOWNLOAD)
    return root


DOWNLOAD = dict(source="bach", max_files=24, val_fraction=0.15, test_fraction=0.25)


@pytest.fixture(scope="module")
def branches(tmp_path_factory, raw) -> dict[str, Path]:
    """The shards of every scheme, from the same files (bpe: 64 merges), and of events and
    remi with 64 merges each."""
    encode = {**PARAMS["encode"], "bpe": {"merges": 64}}
    found = {"index": raw / "shards"}
    for scheme in SCHEMES[1:]:
        root = tmp_path_factory.mktemp(scheme)
        found[scheme] = shards_via_stages(root, encode, scheme, **DOWNLOAD)
    for branch in MERGED:
        scheme = branch.removesuffix("+bpe")
        merged = {**encode, scheme: {**encode[scheme], "merges": 64}}
        root = tmp_path_factory.mktemp(scheme + "-merged")
        found[branch] = shards_via_stages(root, merged, scheme, **DOWNLOAD)
    return found


def test_every_scheme_holds_the_same_songs_and_their_notes(branches):
    """Same split per song (by content hash); every song decodes; index, bpe and events give
    back the notes the index score holds (events: velocities aside, none changed here)."""
    index = load_scheme(branches["index"])
    for scheme_name in FLAT:
        shards = branches[scheme_name]
        scheme = load_scheme(shards)
        assert scheme.name == scheme_name
        for split in ("train", "val", "test"):
            base, shard = load_shard(branches["index"], split), load_shard(shards, split)
            assert [s["sha256"] for s in shard.songs] == [s["sha256"] for s in base.songs]
            for i in range(len(shard.songs)):
                notes = scheme.decode(np.asarray(shard.tokens[shard.song(i)]))
                truth = index.decode(np.asarray(base.tokens[base.song(i)]))
                if scheme_name != "remi":  # REMI keeps pitches 21-108 only
                    assert notes.onset.tolist() == truth.onset.tolist(), scheme_name
                    assert notes.pitch.tolist() == truth.pitch.tolist(), scheme_name
                counted = scheme.note_counts(np.asarray(shard.tokens[shard.song(i)])).sum()
                assert counted == len(notes), scheme_name


def test_bpe_learns_its_merges_from_the_training_split_only(branches):
    """The merges are the ones learned from the training songs' index tokens (with the other
    splits they would differ); merged tokens expand to the index tokens, each at its first
    token's step."""
    bpe, index = load_scheme(branches["bpe"]), load_scheme(branches["index"])
    assert bpe.fields[0] > index.fields[0]  # some merges were learned
    stats = json.loads((branches["bpe"] / "stats.json").read_text())
    assert stats["scheme"] == "bpe" and stats["vocab_size"] == list(bpe.fields)
    for split in ("train", "test"):
        merged, base = load_shard(branches["bpe"], split), load_shard(branches["index"], split)
        for i in range(len(merged.songs)):
            tokens = np.asarray(merged.tokens[merged.song(i)])
            np.testing.assert_array_equal(bpe.expand(tokens), base.tokens[base.song(i)])
            _, first = bpe.merged(np.asarray(base.tokens[base.song(i)]))
            np.testing.assert_array_equal(
                merged.times[merged.song(i)], base.times[base.song(i)][first]
            )
    songs = {
        split: [
            np.asarray(shard.tokens[shard.song(i)])
            for shard in [load_shard(branches["index"], split)]
            for i in range(len(shard.songs))
        ]
        for split in ("train", "val", "test")
    }
    learned = (branches["bpe"] / "bpe.json").read_text()
    assert BPE.train(index, songs["train"], 64).to_json() == learned
    everything = songs["train"] + songs["val"] + songs["test"]
    assert BPE.train(index, everything, 64).to_json() != learned  # the test songs would show


@pytest.mark.parametrize("branch", MERGED)
def test_merges_on_top_of_events_and_remi_are_learned_and_expand_back(branches, branch):
    """`encode.events.merges` (and remi's): the branch keeps its scheme's name, its merges are
    the ones learned from the training songs' own tokens, and every merged song expands to
    exactly the tokens of the unmerged branch, with the same notes per song."""
    name = branch.removesuffix("+bpe")
    merged, plain = load_scheme(branches[branch]), load_scheme(branches[name])
    assert isinstance(merged, BPE) and merged.name == name
    assert merged.fields[0] > plain.fields[0]
    train = load_shard(branches[name], "train")
    songs = [np.asarray(train.tokens[train.song(i)]) for i in range(len(train.songs))]
    learned = (branches[branch] / "bpe.json").read_text()
    assert BPE.train(plain, songs, 64, name).to_json() == learned
    for split in ("train", "test"):
        shard, base = load_shard(branches[branch], split), load_shard(branches[name], split)
        assert len(shard.tokens) < len(base.tokens)  # merging shortened the songs
        for i in range(len(shard.songs)):
            tokens, truth = np.asarray(shard.tokens[shard.song(i)]), base.tokens[base.song(i)]
            np.testing.assert_array_equal(merged.expand(tokens), truth)
            assert merged.note_counts(tokens).sum() == plain.note_counts(truth).sum()
            assert merged.decode(tokens).equals(plain.decode(np.asarray(truth)))


@pytest.mark.parametrize("scheme_name", [*SCHEMES, *MERGED])
def test_the_grammar_tracks_the_steps_the_encoder_wrote(branches, scheme_name):
    """Every stored token sounds at the step the scheme's grammar says it sounds at (what
    generation feeds the model as its bar position); a codebook row at its own onset."""
    shards = branches[scheme_name]
    scheme, shard = load_scheme(shards), load_shard(shards, "test")
    grammar = scheme.grammar
    for song in range(len(shard.songs)):
        span = shard.song(song)
        tokens, times = shard.tokens[span].tolist(), shard.times[span]
        cursor = grammar.parse(tokens[:1])
        for i, token in enumerate(tokens[1:-1], start=1):
            assert grammar.sounds_at(cursor, token) == times[i], (scheme_name, song, i)
            cursor = grammar.advance(cursor, token)


def tiny(fields: tuple[int, ...], variant: str, seed: int = 0):
    torch.manual_seed(seed)
    config = train_stage.model_config(
        {**PARAMS, "model": {**PARAMS["model"], **TINY_MODEL}}, variant, fields, 4
    )
    return build_model(config).eval()


@pytest.mark.parametrize("scheme_name", [*SCHEMES, *MERGED])
@pytest.mark.parametrize("variant", ["xl_knn", "lstm"])
def test_generation_in_every_scheme_decodes(branches, scheme_name, variant):
    """A random model of each kind continues each test song's opening inside the scheme's
    grammar; what it draws, cut to whole rows, decodes after the prompt."""
    shards = branches[scheme_name]
    scheme, shard = load_scheme(shards), load_shard(shards, "test")
    model = tiny(scheme.fields, variant)
    config = GenerateConfig(length=40, min_length=5)
    for song in range(min(3, len(shard.songs))):
        span = shard.song(song)
        prompt, _ = split_song(
            np.asarray(shard.tokens[span], np.int64),
            np.asarray(shard.times[span]),
            np.asarray(shard.bar_pos[span]),
            2,
            4,
            scheme.grammar,
        )
        drawn = generate(model, prompt, scheme, config, seed=song).tokens
        assert 1 <= len(drawn) <= 40
        grammar = scheme.grammar
        grammar.parse([*prompt.tokens.tolist(), *drawn])  # raises on a grammar error
        kept = whole_rows(grammar, grammar.parse(prompt.tokens.tolist()), drawn)
        decode_song(scheme, [*prompt.tokens.tolist(), *kept])


@pytest.mark.parametrize("scheme_name", ["events", "bpe", "codebook"])
def test_bits_per_note_divide_by_the_notes_each_scheme_predicts(branches, scheme_name):
    shards = branches[scheme_name]
    scheme, shard = load_scheme(shards), load_shard(shards, "test")
    model = tiny(scheme.fields, "vanilla")
    metrics, _ = evaluate_model(model, shard, scheme, (0, 128), 4, 8, 32)
    targets = np.concatenate(
        [np.asarray(shard.tokens[shard.song(i)])[1:] for i in range(len(shard.songs))]
    )  # rows for codebook
    notes = int(scheme.note_counts(targets).sum())
    total = sum(metrics["songs"]["nll_sum"])
    assert metrics["bits_per_note"] == pytest.approx(total / math.log(2) / notes, rel=1e-6)
    assert metrics["tokens_per_note"] == pytest.approx(len(targets) / notes)
    assert set(metrics["loss_by_type"]) <= set(np.unique(scheme.kinds(targets)))


def test_a_stage_refuses_shards_of_another_scheme(branches):
    args = argparse.Namespace(scheme="index", shards=branches["events"])
    with pytest.raises(MidigenError, match="holds events tokens, not index"):
        shards_of(args)


@pytest.mark.parametrize("scheme_name", ["events", "codebook"])
def test_the_lstm_variant_trains_generates_and_evaluates_through_the_stages(
    branches, tmp_path, scheme_name
):
    """train.variants [lstm]: sized to the vanilla transformer, saved as an LSTM, refused as
    another variant, and carried through generate and evaluate like any variant."""
    shards, raw = branches[scheme_name], branches[scheme_name].parent / "raw"
    params = validate_params(
        {
            **PARAMS,
            "model": {**PARAMS["model"], **TINY_MODEL},
            "train": {
                **PARAMS["train"],
                "variants": ["vanilla", "lstm"],
                "steps": 2,
                "eval_every": 2,
                "checkpoint_every": 2,
            },
            "generate": {**PARAMS["generate"], "prompts": 2, "length": 24, "min_length": 4},
        }
    )
    common = dict(scheme=scheme_name, shards=shards, variant="lstm")
    train_stage.run(
        argparse.Namespace(
            **common,
            out=tmp_path / "lstm",
            metrics=tmp_path / "live",
            resume=False,
            checkpoints=tmp_path / "checkpoints",
        ),
        params,
    )
    fields = load_scheme(shards).fields
    model = load_trained(tmp_path / "lstm" / "model.pt", fields, variant="lstm")
    transformer = build_model(
        variant_config("vanilla", train_stage.model_config(params, "vanilla", fields, 4))
    )
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # the nearest hidden size in steps of 8: within 10% of a model this small
    assert abs(count(model) - count(transformer)) / count(transformer) < 0.1
    with pytest.raises(MidigenError, match="a model with memory 'lstm', not the vanilla variant"):
        load_trained(tmp_path / "lstm" / "model.pt", fields, variant="vanilla")
    generate_stage.run(
        argparse.Namespace(
            **common, raw=raw, model=tmp_path / "lstm" / "model.pt", out=tmp_path / "samples"
        ),
        params,
    )
    summary = evaluate_stage.run(
        argparse.Namespace(
            **common,
            model=tmp_path / "lstm" / "model.pt",
            samples=tmp_path / "samples",
            metrics=tmp_path / "lstm.json",
            plots=tmp_path / "plots",
        ),
        params,
    )
    assert summary.startswith(f"{scheme_name} lstm:")
    metrics = json.loads((tmp_path / "lstm.json").read_text())
    assert math.isfinite(metrics["bits_per_note"]) and metrics["music"]["prompts"] == 2


def test_rows_of_fields_are_embedded_summed_and_predicted_by_a_head_each():
    """A codebook row's embedding is its fields' sum; its logits are one head per field,
    padded to the widest with MASKED; its loss is the sum of the fields' cross entropies."""
    fields = (130, 11, 10)
    model = tiny(fields, "vanilla")
    rows = torch.stack([torch.randint(0, n, (2, 9)) for n in fields], dim=-1)
    bar_pos = torch.zeros(2, 9, dtype=torch.int64)
    logits, _, _ = model(rows, bar_pos)
    assert logits.shape == (2, 9, 3, 130)
    assert (logits[:, :, 1, 11:] == MASKED).all() and (logits[:, :, 2, 10:] == MASKED).all()
    embedded = sum(emb(rows[..., f]) for f, emb in enumerate([model.tok_emb, *model.field_emb]))
    np.testing.assert_allclose(
        embed_rows(model.tok_emb, model.field_emb, rows).detach(), embedded.detach()
    )
    targets = rows.roll(-1, dims=1)
    targets[:, -1] = IGNORE
    total, count = token_loss(logits, targets)
    by_hand = sum(
        torch.nn.functional.cross_entropy(
            logits[:, :-1, f, : fields[f]].flatten(0, 1),
            targets[:, :-1, f].flatten(),
            reduction="sum",
        )
        for f in range(3)
    )
    assert int(count) == 2 * 8
    assert float(total.detach()) == pytest.approx(float(by_hand.detach()), rel=1e-5)
