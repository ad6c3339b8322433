"""Can a memory variant learn to copy from beyond its context? A learned demonstration.

    python bench/copying.py                            # vanilla, xl, xl_knn; ~14 min on 2 cores
    python bench/copying.py --variants vanilla xl_knn --steps 600 --warmup 300
    python bench/copying.py --set model.d_model=128    # override a model or train setting
    python bench/copying.py --results bench/RESULTS.md # also record the table there

The source is random: every song is a sequence of random note tokens (an alphabet of
`--alphabet` pitches) played twice in a row, through the real training pipeline (shards on
disk, `ContiguousBatches` with `train.repeat_fraction` 1, `Trainer`). Nothing but memory can
predict a random token: in the first copy every model is at chance (ln alphabet), and in the
second copy a model predicts well only if it can look the first copy up.

A curriculum in two phases, the same for every variant: `--warmup` steps on short songs only
(the copy lies inside the segment, where local attention learns the look-up circuit), then
short and long songs mixed (a long song's copy lies beyond segment + XL reach: only the kNN
memory holds it). The weights and the optimizer go on from one phase to the next. The test
songs are all long, scored by the real repeat probe (`midigen.evaluation.likelihood.repeat_probe`).
Target (issue 10): xl_knn's second-copy NLL <= 50% of its first copy; vanilla's >= 90%.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from sections import record

from midigen.data.corpus import ARRAYS, SONG_FIELDS, load_shard
from midigen.encodings.catalog import write_scheme
from midigen.encodings.index import Index
from midigen.encodings.scores import Vocab
from midigen.evaluation.likelihood import repeat_probe
from midigen.models.training import TrainConfig, Trainer
from midigen.models.transformer import ModelConfig
from midigen.registry import VARIANTS

VOCAB = Vocab(max_duration=32)
MODEL = dict(
    n_layer=1, n_head=4, d_model=64, d_ff=256, dropout=0.0, segment_len=64, xl_mem_len=64,
    knn_layer=0, knn_k=32, previous_tokens=2,
)  # fmt: skip  # one layer with token shift: the look-up circuit (an induction head) must sit
# in the kNN layer, and its keys depend on the tokens alone, not on how far the song has come;
# two previous tokens, so a key says where in the first copy it is (one token recurs there)
TRAIN = dict(
    batch_size=32, lr=3e-3, min_lr=3e-3, warmup_steps=50, weight_decay=0.0, pitch_shift=(0, 0),
    repeat_fraction=1.0, memory_lr_scale=10.0,
)  # fmt: skip


def random_songs(n: int, lengths: tuple[int, int], alphabet: int, rng: np.random.Generator):
    """n songs `<sos>` + random notes + `<eos>`, of lengths drawn from [low, high]."""
    for _ in range(n):
        body = rng.integers(0, alphabet, int(rng.integers(lengths[0], lengths[1] + 1)))
        yield np.concatenate([[VOCAB.sos], VOCAB.note(body), [VOCAB.eos]])


def write_split(folder: Path, songs: list[np.ndarray]) -> None:
    """One shard folder in the format `midigen.data.corpus.load_shard` reads."""
    folder.mkdir(parents=True)
    tokens = np.concatenate(songs)
    times = np.concatenate([np.arange(len(s)) for s in songs])
    arrays = {"tokens": tokens, "times": times, "bar_pos": np.zeros_like(tokens)}
    for name, dtype in ARRAYS.items():
        np.save(folder / f"{name}.npy", arrays[name].astype(dtype))
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in songs])]).astype(np.int64)
    np.save(folder / "offsets.npy", offsets)
    with open(folder / "songs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SONG_FIELDS)
        writer.writeheader()
        for i, song in enumerate(songs):
            row = dict(sha256=f"{i:064x}", split=folder.name, source="random", notes=len(song) - 2)
            writer.writerow(dict(row, tokens=len(song), steps=len(song)))


def write_shards(out: Path, args: argparse.Namespace) -> None:
    """out/warmup: short songs; out/mixed: short and long; both with the same long test songs."""
    rng = np.random.default_rng(args.seed)
    n_long = int(args.train_songs * args.long_share)
    short = [*random_songs(args.train_songs, args.short, args.alphabet, rng)]
    mixed = short[n_long:] + list(random_songs(n_long, args.long, args.alphabet, rng))
    val = list(random_songs(8, args.long, args.alphabet, rng))
    test = list(random_songs(args.test_songs, args.long, args.alphabet, rng))
    test_short = list(random_songs(args.test_songs, args.short, args.alphabet, rng))
    scheme = {"steps_per_beat": 4, "max_duration": VOCAB.max_duration, "instruments": "merge"}
    for phase, train in (("warmup", short), ("mixed", mixed)):
        folder = out / phase
        write_split(folder / "train", [train[i] for i in rng.permutation(len(train))])
        write_split(folder / "val", val)
        write_split(folder / "test", test)
        write_split(folder / "test_short", test_short)
        write_scheme(folder, "index", {**scheme, "index": {}})


def train_and_probe(variant: str, shards: Path, args: argparse.Namespace) -> dict:
    """Train one variant through both phases; its repeat probe on the long test songs."""
    model = {**MODEL, **args.overrides["model"]}
    model_config = ModelConfig(vocab_size=len(VOCAB), memory=VARIANTS[variant], **model)
    train_config = TrainConfig(
        **{**TRAIN, **args.overrides["train"]},
        steps=args.steps,
        eval_every=args.steps,
        checkpoint_every=args.steps,
    )
    start = time.perf_counter()
    warmup = Trainer(model_config, train_config, shards / "warmup", Path(args.work) / variant)
    warmup.run(stop_after=args.warmup)
    trainer = Trainer(model_config, train_config, shards / "mixed", Path(args.work) / variant)
    trainer.module.load_state_dict(warmup.module.state_dict())
    trainer.optimizer.load_state_dict(warmup.optimizer.state_dict())
    trainer.step = warmup.step
    trainer.run()
    seconds = time.perf_counter() - start
    model = trainer.module.eval()
    probe = repeat_probe(model, load_shard(shards / "mixed", "test"), Index(VOCAB), 8)
    short = repeat_probe(model, load_shard(shards / "mixed", "test_short"), Index(VOCAB), 8)
    return {"variant": variant, "seconds": seconds, **probe, "short_second": short["second"]}


def overrides(settings: list[str]) -> dict[str, dict]:
    """`model.knn_layer=0`-style settings -> {"model": {...}, "train": {...}} (YAML values)."""
    found: dict[str, dict] = {"model": {}, "train": {}}
    for setting in settings:
        name, _, value = setting.partition("=")
        section, _, key = name.partition(".")
        if section not in found or not key or not value:
            raise SystemExit(f"--set {setting!r}: expected model.KEY=VALUE or train.KEY=VALUE")
        found[section][key] = yaml.safe_load(value)
    return found


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "| variant | train s | 1st copy NLL | 2nd copy NLL | 2nd / 1st | target | met "
        "| short songs' 2nd copy |",
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    targets = {"xl_knn": ("<= 50%", lambda r: r <= 0.5), "vanilla": (">= 90%", lambda r: r >= 0.9)}
    for row in rows:
        ratio = row["second"] / row["first"]
        target, check = targets.get(row["variant"], ("-", None))
        met = "-" if check is None else ("yes" if check(ratio) else "NO")
        lines.append(
            f"| {row['variant']} | {row['seconds']:.0f} | {row['first']:.3f} | "
            f"{row['second']:.3f} | {ratio:.0%} | {target} | {met} | {row['short_second']:.3f} |"
        )
    chance = np.log(args.alphabet)
    return "\n".join(lines) + f"\n\nchance = ln {args.alphabet} = {chance:.3f} nats/token\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["vanilla", "xl", "xl_knn"])
    parser.add_argument("--steps", type=int, default=8000, help="training steps in all")
    parser.add_argument("--warmup", type=int, default=2500, help="steps on short songs first")
    parser.add_argument("--alphabet", type=int, default=128, help="distinct random tokens")
    parser.add_argument("--short", type=int, nargs=2, default=(8, 24), help="train lengths")
    parser.add_argument("--long", type=int, nargs=2, default=(160, 256), help="beyond reach")
    parser.add_argument("--long-share", type=float, default=0.05, help="after the warm-up")
    parser.add_argument("--train-songs", type=int, default=4000)
    parser.add_argument("--test-songs", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
        help="override the bench's settings, e.g. model.knn_layer=0 train.lr=0.001",
    )  # fmt: skip
    parser.add_argument("--results", type=Path, help="write the table as its section there")
    args = parser.parse_args()
    args.overrides = overrides(args.set)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        args.work = work
        shards = Path(work) / "shards"
        write_shards(shards, args)
        rows = []
        for variant in args.variants:
            rows.append(train_and_probe(variant, shards, args))
            print(json.dumps(rows[-1]), flush=True)
    report = table(rows, args)
    print(report)
    if args.results:
        record(args.results, "copying", "### Copy demonstration", report)


if __name__ == "__main__":
    main()
