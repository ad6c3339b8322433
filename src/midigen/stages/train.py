"""Train one variant (vanilla | xl | xl_knn) on the shards; `--resume` continues a checkpoint.

Writes OUT/model.pt (final weights), OUT/checkpoint.pt (for --resume), the shards' scheme.json
(and bpe.json) so that OUT is usable on its own (`midigen continue`), and DVCLive metrics to
--metrics; with train.seeds > 1 the same for every further seed S in OUT/seed-S (DVCLive
metrics in OUT/seed-S/live). While it trains, its checkpoints wait in CHECKPOINTS/V/<key>/,
outside what the DAG tools delete before a re-run: killed and run again with the same
params, shards and code (the key), it resumes from the last one; done, it removes them.
Under `torchrun --nproc_per_node N -m midigen train ...` it trains with DDP.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from midigen.atomic import atomic_file
from midigen.dag import PACKAGE, SOURCE_ROOT, code_deps, default_help, with_defaults
from midigen.encodings.catalog import MERGES_FILE, SCHEME_FILE, steps_per_beat_of
from midigen.errors import MidigenError
from midigen.models.training import TrainConfig, Trainer, seed_runs
from midigen.models.transformer import ModelConfig
from midigen.models.variants import Config, variant_config
from midigen.stages.branch import add_scheme_argument, shards_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, help="one of train.variants")
    add_scheme_argument(parser)
    parser.add_argument("--shards", type=Path, help=default_help("train", "shards"))
    parser.add_argument("--out", type=Path, help=default_help("train", "out"))
    parser.add_argument(
        "--metrics", type=Path, help=f"DVCLive folder ({default_help('train', 'metrics')})"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    waiting = default_help("train", "checkpoints")
    parser.add_argument(
        "--checkpoints", type=Path, help=f"where checkpoints wait while training ({waiting})"
    )


def model_config(
    params: dict, variant: str, fields: tuple[int, ...], steps_per_beat: int
) -> Config:
    """The model of one variant for a scheme's fields (vocabulary sizes): the transformers
    share every setting but their memory, the LSTM is sized to the vanilla transformer
    (midigen.models.variants)."""
    config = ModelConfig(
        vocab_size=fields[0],
        extra_fields=tuple(fields[1:]),
        steps_per_beat=steps_per_beat,
        **params["model"],
    )
    config.validate()
    return variant_config(variant, config)


def run_key(config: ModelConfig, train: TrainConfig, shards: Path) -> str:
    """What a checkpoint was made by: the model and training settings, the shards' content and
    the code of the train stage. A run resumes only from a checkpoint with its own key."""
    digest = hashlib.sha256(
        json.dumps({"model": asdict(config), "train": asdict(train)}, sort_keys=True).encode()
    )
    files = sorted(p for p in Path(shards).rglob("*") if p.is_file())
    files += [PACKAGE / d.removeprefix(f"{SOURCE_ROOT}/") for d in code_deps("train")]
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def run(args: argparse.Namespace, params: dict) -> str:
    if args.variant not in params["train"]["variants"]:
        raise MidigenError(
            f"--variant {args.variant} is not one of train.variants {params['train']['variants']}"
        )
    args = with_defaults("train", args)
    shards, scheme = shards_of(args)
    config = model_config(params, args.variant, scheme.fields, steps_per_beat_of(shards))
    out, metrics = args.out, args.metrics
    train_config = TrainConfig.from_params(params["train"], params["data"])
    done = []
    for seed, folder in seed_runs(train_config):  # the main model first, then the others
        seeded = replace(train_config, seed=seed)
        store = args.checkpoints / args.variant / run_key(config, seeded, shards)
        if args.resume and (out / folder / "checkpoint.pt").exists():
            store.mkdir(parents=True, exist_ok=True)
            shutil.copy2(out / folder / "checkpoint.pt", store / "checkpoint.pt")
        trainer = Trainer(
            config,
            seeded,
            shards,
            out / folder,
            out / folder / "live" if folder else metrics,
            checkpoint=store / "checkpoint.pt",
        )
        last = trainer.run(resume=True)  # from the store's checkpoint, if a run left one
        trainer.save_model(out / folder / "model.pt")
        trainer.save_checkpoint(out / folder / "checkpoint.pt")
        if trainer.env.rank == 0:
            shutil.rmtree(store, ignore_errors=True)
        done.append(
            f"seed {seed}: train loss {last.get('train_loss', 0):.3f}, "
            f"val loss {last.get('val_loss', float('nan')):.3f}"
        )
    if trainer.env.rank == 0:
        record_scheme(shards, out)
    return (
        f"{args.scheme} {args.variant}: {trainer.step} steps, {'; '.join(done)} nats/token -> {out}"
    )


def record_scheme(shards: Path, out: Path) -> None:
    """Copy the shards' scheme files (the scheme and its learned merges) beside the model."""
    for name in (SCHEME_FILE, MERGES_FILE):
        if (shards / name).exists():
            with atomic_file(out / name, "wb") as f:
                f.write((shards / name).read_bytes())
