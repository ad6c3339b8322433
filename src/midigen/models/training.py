"""Train one model variant on the contiguous song stream.

AdamW with linear warmup and cosine decay, gradient clipping, pitch-shift augmentation,
periodic validation, atomic checkpoints that `resume` continues exactly (weights, optimizer,
data position, RNG and the memories themselves), DVCLive metrics, bf16 autocast on CUDA, and
DistributedDataParallel under torchrun (each process trains its share of the batch rows).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from midigen.atomic import atomic_file
from midigen.data.batching import IGNORE, ContiguousBatches, Segment
from midigen.data.corpus import load_shard
from midigen.encodings.catalog import load_scheme
from midigen.errors import MidigenError
from midigen.models.transformer import token_loss
from midigen.models.variants import Config, build_model, saved_form
from midigen.params import default
from midigen.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = default("train", "steps")
    batch_size: int = default("train", "batch_size")
    lr: float = default("train", "lr")
    min_lr: float = default("train", "min_lr")
    warmup_steps: int = default("train", "warmup_steps")
    weight_decay: float = default("train", "weight_decay")
    memory_lr_scale: float = default("train", "memory_lr_scale")  # lr x, memory-steering params
    grad_clip: float = default("train", "grad_clip")
    seed: int = default("train", "seed")
    seeds: int = default("train", "seeds")  # models per variant: seeds seed, seed + 1, ...
    pitch_shift: tuple[int, int] = tuple(default("train", "pitch_shift"))
    repeat_fraction: float = default("train", "repeat_fraction")  # songs played twice
    eval_every: int = default("train", "eval_every")
    checkpoint_every: int = default("train", "checkpoint_every")
    location: str = default("data", "location")  # where the shards live: disk | cpu | gpu

    @classmethod
    def from_params(cls, train: dict, data: dict | None = None) -> TrainConfig:
        known = {k: v for k, v in train.items() if k in cls.__dataclass_fields__}
        known["pitch_shift"] = tuple(known.get("pitch_shift", cls.pitch_shift))
        return cls(**known, location=(data or {}).get("location", cls.location))


def seed_runs(config: TrainConfig) -> list[tuple[int, str]]:
    """(seed, folder) of every model a variant trains: the first seed's is the main model, in
    the variant's own folder; the others go in seed-SEED subfolders (models/S/V, plots/S/eval/V)."""
    seeds = range(config.seed, config.seed + config.seeds)
    return [(seed, "" if i == 0 else f"seed-{seed}") for i, seed in enumerate(seeds)]


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> None:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back at once.

    A CPU training step allocates and frees tensors of several MB, several per layer (the
    attention scores above all). By default glibc maps the largest of them fresh, or trims its
    heap when they are freed, and every page of the next one faults in again, zero-filled by
    the kernel: ~7% of an xl step at the default model (bench/train.py, bench/RESULTS.md).
    32 MiB is the largest mmap threshold glibc accepts. Other C libraries are left as they are.
    """
    if platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


@dataclass
class Distributed:
    """This process's place under torchrun (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def setup(cls) -> Distributed:
        cuda = torch.cuda.is_available()
        if not cuda:  # denormal floats slow CPU backward passes by an order of magnitude
            torch.set_flush_denormal(True)
            keep_freed_memory()
        if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
            return cls(device=torch.device("cuda" if cuda else "cpu"))
        dist.init_process_group("nccl" if cuda else "gloo")
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def rows(self, batch_size: int) -> tuple[int, int]:
        if batch_size % self.world:
            raise MidigenError(
                f"train.batch_size ({batch_size}) must be a multiple of the "
                f"number of processes ({self.world})"
            )
        share = batch_size // self.world
        return self.rank * share, (self.rank + 1) * share

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(value)
        return value


class Trainer:
    """Everything one training run needs, so that `resume` can restore all of it."""

    def __init__(
        self,
        model_config: Config,
        config: TrainConfig,
        shards: Path,
        out: Path,
        live_dir: Path | None = None,
        checkpoint: Path | None = None,
    ):
        self.config, self.model_config = config, model_config
        self.out, self.live_dir = Path(out), live_dir
        self.checkpoint = Path(checkpoint) if checkpoint else self.out / "checkpoint.pt"
        self.env = Distributed.setup()
        torch.manual_seed(config.seed)
        scheme = load_scheme(shards)
        mmap = config.location == "disk"
        self.train_batches = ContiguousBatches(
            load_shard(shards, "train", mmap),
            scheme,
            config.batch_size,
            model_config.segment_len,
            seed=config.seed,
            pitch_range=config.pitch_shift,
            repeat_fraction=config.repeat_fraction,
        )
        self.val_batches = ContiguousBatches(
            load_shard(shards, "val", mmap),
            scheme,
            config.batch_size,
            model_config.segment_len,
            shuffle=False,
            split="val",
        )
        self.model = build_model(model_config).to(self.env.device)
        self.module = self.model
        if self.env.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.module)
        self.optimizer = torch.optim.AdamW(
            self.module.optimizer_groups(config.weight_decay, config.memory_lr_scale),
            lr=config.lr,
            betas=(0.9, 0.95),
        )
        self.step, self.epoch, self.position, self.state = 0, 0, 0, None
        self.history: list[dict] = []

    # ---- one step -----------------------------------------------------------------------

    def _forward(self, segment: Segment, state):
        segment = segment.to(self.env.device)
        autocast = torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=self.env.device.type == "cuda"
        )
        with autocast:
            logits, _, state = self.model(segment.tokens, segment.bar_pos, segment.doc, state)
        return logits, state

    def train_step(self, segment: Segment) -> float:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.config) * group.get("lr_scale", 1.0)
        logits, self.state = self._forward(segment, self.state)
        loss_sum, count = token_loss(logits, segment.targets.to(self.env.device))
        total = self.env.sum(count.clone().float()).clamp(min=1)
        # DDP averages gradients over processes: scale so the result is the global token mean.
        (loss_sum * self.env.world / total).backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(self.env.sum(loss_sum.detach()) / total)

    @functools.cached_property
    def _val_segments(self) -> list[Segment]:
        """Validation never shuffles or transposes, so its segments are built once."""
        return self.val_batches.epoch(0)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean token NLL (nats) on the whole validation split, memories carried along."""
        self.model.eval()
        start, stop = self.env.rows(self.config.batch_size)
        state, loss, count = None, torch.zeros(()), torch.zeros(())
        for segment in self._val_segments:
            segment = segment.rows(start, stop)
            logits, state = self._forward(segment, state)
            s, c = token_loss(logits, segment.targets.to(self.env.device))
            loss, count = loss + s.cpu(), count + c.cpu()
        return float(self.env.sum(loss) / self.env.sum(count).clamp(min=1))

    # ---- the loop -----------------------------------------------------------------------

    def run(self, resume: bool = False, stop_after: int | None = None) -> dict:
        """Train to `config.steps` (or `stop_after` steps, to test resuming); return metrics."""
        if resume and self.checkpoint.exists():
            self.load_checkpoint(self.checkpoint)
            log.info("resuming from step %d (%s)", self.step, self.checkpoint)
        live = self._live()
        start, stop = self.env.rows(self.config.batch_size)
        shown = Progress(
            f"train {self.out}",  # models/SCHEME/VARIANT: what is trained, and where
            self.config.steps,
            "step",
            initial=self.step,
            enabled=self.env.rank == 0,
        )
        tokens_done, t0 = 0, time.perf_counter()
        last = stop_after if stop_after is not None else self.config.steps
        epoch, segments = None, []
        while self.step < min(last, self.config.steps):
            if epoch != self.epoch:  # an epoch's segments are built once, not every step
                epoch, segments = self.epoch, self.train_batches.epoch(self.epoch)
            if self.position >= len(segments):
                self.epoch, self.position = self.epoch + 1, 0
                continue
            segment = segments[self.position].rows(start, stop)
            self.position += 1
            loss = self.train_step(segment)
            tokens_done += int((segment.targets != IGNORE).sum()) * self.env.world
            speed = f"{tokens_done / (time.perf_counter() - t0):,.0f}"
            shown.update(loss=f"{loss:.3f}", **{"tokens/s": speed})
            record = {
                "step": self.step,
                "train_loss": loss,
                "lr": lr_at(self.step - 1, self.config),
            }
            if self.step % self.config.eval_every == 0 or self.step == self.config.steps:
                record["val_loss"] = self.evaluate()
                shown.fields["val_loss"] = f"{record['val_loss']:.3f}"
                shown.line()  # every validation is news
            self.history.append(record)
            if live is not None:
                for key, value in record.items():
                    if key != "step":
                        live.log_metric(key, value)
                live.next_step()
            if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                self.save_checkpoint(self.checkpoint)
        shown.close()
        if live is not None:
            live.end()
        return self.history[-1] if self.history else {}

    def _live(self):
        """DVCLive logs written anew, the steps a resumed run already made replayed from its
        checkpoint's history: the same files as an uninterrupted run's, even where the DAG
        tool deleted them before the re-run."""
        if self.live_dir is None or self.env.rank != 0:
            return None
        from dvclive import Live

        live = Live(str(self.live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
        live.log_params({"model": asdict(self.model_config), "train": asdict(self.config)})
        for record in self.history:
            for key, value in record.items():
                if key != "step":
                    live.log_metric(key, value)
            live.next_step()
        return live

    # ---- checkpoints --------------------------------------------------------------------

    def save_checkpoint(self, path: Path) -> None:
        if self.env.rank != 0 and self.env.world > 1:
            return
        checkpoint = {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "rng": torch.get_rng_state(),
            "memory": None if self.state is None else self.state.state_dict(),
            "model_config": asdict(self.model_config),
            "history": self.history,
        }
        with atomic_file(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path: Path) -> None:
        checkpoint = torch.load(path, map_location=self.env.device, weights_only=True)
        self.module.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.step, self.epoch = checkpoint["step"], checkpoint["epoch"]
        self.position, self.history = checkpoint["position"], checkpoint["history"]
        torch.set_rng_state(checkpoint["rng"])
        if checkpoint["memory"] is not None:
            self.state = self.module.memory_state_from(checkpoint["memory"])

    def save_model(self, path: Path) -> None:
        """Final weights + config: what generate and evaluate load (weights_only safe)."""
        if self.env.rank == 0:
            with atomic_file(path, "wb") as f:
                torch.save(saved_form(self.module), f)
