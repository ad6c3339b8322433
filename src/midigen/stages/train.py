"""Train one variant (vanilla | xl | xl_knn) on the shards; `--resume` continues a checkpoint.

Writes OUT/model.pt (final weights), OUT/checkpoint.pt (for --resume) and DVCLive metrics to
--metrics; with train.seeds > 1 the same for every further seed S in OUT/seed-S (DVCLive
metrics in OUT/seed-S/live). Under `torchrun --nproc_per_node N -m midigen train ...` it
trains with DDP.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from midigen.corpus import load_vocab
from midigen.errors import MidigenError
from midigen.model import ModelConfig, variant_memory
from midigen.train import TrainConfig, Trainer, seed_runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, help="one of train.variants")
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--out", type=Path, help="default: models/VARIANT")
    parser.add_argument(
        "--metrics", type=Path, help="DVCLive folder (default: metrics/train/VARIANT)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")


def model_config(params: dict, variant: str, vocab_size: int, steps_per_beat: int) -> ModelConfig:
    """The model of one variant: all variants share every setting but their memory."""
    config = ModelConfig(
        vocab_size=vocab_size,
        steps_per_beat=steps_per_beat,
        memory=variant_memory(variant),
        **params["model"],
    )
    config.validate()
    return config


def run(args: argparse.Namespace, params: dict) -> str:
    if args.variant not in params["train"]["variants"]:
        raise MidigenError(
            f"--variant {args.variant} is not one of train.variants {params['train']['variants']}"
        )
    vocab = load_vocab(args.shards)
    config = model_config(params, args.variant, len(vocab), params["encode"]["steps_per_beat"])
    out = args.out or Path("models") / args.variant
    metrics = args.metrics or Path("metrics/train") / args.variant
    train_config = TrainConfig.from_params(params["train"], params["data"])
    done = []
    for seed, folder in seed_runs(train_config):  # the main model first, then the others
        trainer = Trainer(
            config,
            replace(train_config, seed=seed),
            args.shards,
            out / folder,
            out / folder / "live" if folder else metrics,
        )
        last = trainer.run(resume=args.resume)
        trainer.save_model(out / folder / "model.pt")
        done.append(
            f"seed {seed}: train loss {last.get('train_loss', 0):.3f}, "
            f"val loss {last.get('val_loss', float('nan')):.3f}"
        )
    return f"{args.variant}: {trainer.step} steps, {'; '.join(done)} nats/token -> {out}"
