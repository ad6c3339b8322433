"""Training throughput of the three variants against a minimal reference transformer.

    python bench/train.py                          # default model size, batch 8 x 256, CPU
    python bench/train.py --steps 16 --repeats 5   # more timed steps
    python bench/train.py --shards data/shards/index  # real songs (default if it exists)
    python bench/train.py --device cuda --batch 64 # on a GPU, bf16 autocast as training

Every side does the same work per step: forward, cross entropy, backward, AdamW step, on the
same segments of a contiguous song stream (real shards when present, else random tokens in
songs of chorale-like length). Memories are carried from step to step, so the kNN memory holds
what it would in training. The reference is nanoGPT-shaped: fused QKV, learned absolute
positions, scaled_dot_product_attention(is_causal=True), tied head, nothing else; its
dropout is on embeddings and residual branches as MusicTransformer's; `ref_noattn` has no
dropout on attention weights, as MusicTransformer (attn_dropout 0), so it does the same work
and is the headline's reference. `reference`, with nanoGPT's dropout on attention weights too
(which takes it off torch's fused causal kernel), is printed for information.
Sides are timed in turns, one step each, so that a slow spell of the machine hits them all
alike; the median step time is reported.
On `--device cuda` every side runs under bf16 autocast, as `Trainer` trains there, and each
timed step ends with a CUDA synchronisation (the GPU's work is timed, not its queueing).
Targets (issue 25): vanilla >= 1.0x ref_noattn on a CPU, 0.9x on a GPU; xl >= 0.8x vanilla;
xl_knn >= 0.75x vanilla on a CPU, 0.6x on a GPU at batch 64.
`--results bench/RESULTS.md` writes the table as the file's "train" section (bench/sections.py),
or its "train-cuda" section when it ran on a GPU.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from sections import record
from torch import nn

from midigen.data.batching import IGNORE
from midigen.models.memory import KNNMemory, MemoryState
from midigen.models.training import keep_freed_memory
from midigen.models.transformer import ModelConfig, MusicTransformer
from midigen.params import load_params


class Reference(nn.Module):
    """The plainest GPT of the same size: what the variants' extras are measured against."""

    def __init__(self, c: ModelConfig, attn_dropout: float):
        super().__init__()
        self.n_head, self.p = c.n_head, attn_dropout
        self.tok, self.pos = (
            nn.Embedding(c.vocab_size, c.d_model),
            nn.Embedding(c.segment_len, c.d_model),
        )
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln1": nn.LayerNorm(c.d_model),
                    "qkv": nn.Linear(c.d_model, 3 * c.d_model),
                    "proj": nn.Linear(c.d_model, c.d_model),
                    "ln2": nn.LayerNorm(c.d_model),
                    "up": nn.Linear(c.d_model, c.d_ff),
                    "down": nn.Linear(c.d_ff, c.d_model),
                }
            )
            for _ in range(c.n_layer)
        )
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.head.weight = self.tok.weight
        self.drop = nn.Dropout(c.dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t = tokens.shape
        x = self.drop(self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device)))
        for blk in self.blocks:
            q, k, v = (
                blk["qkv"](blk["ln1"](x)).view(b, t, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)
            )
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.p if self.training else 0.0
            )
            x = x + self.drop(blk["proj"](y.transpose(1, 2).reshape(b, t, -1)))
            x = x + self.drop(blk["down"](F.gelu(blk["up"](blk["ln2"](x)))))
        return self.head(self.ln_f(x))


def segments(args: argparse.Namespace, vocab_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """(tokens, targets, bar_pos, doc) segments of a contiguous song stream, forever."""
    if args.shards.exists():
        from midigen.data.batching import ContiguousBatches
        from midigen.data.corpus import load_shard
        from midigen.encodings.catalog import load_scheme

        batches = ContiguousBatches(
            load_shard(args.shards, "train"),
            load_scheme(args.shards),
            args.batch,
            args.segment,
            seed=0,
        )
        for s in batches:
            yield s.tokens, s.targets, s.bar_pos, s.doc
    g = torch.Generator().manual_seed(0)
    length = args.segment * 16
    while True:  # songs of 300..1500 tokens back to back in every row
        doc = torch.zeros(args.batch, length, dtype=torch.int64)
        for row in range(args.batch):
            edges = torch.randint(300, 1500, (length // 300,), generator=g).cumsum(0)
            doc[row] = torch.bucketize(torch.arange(length), edges) + 1000 * row
        tokens = torch.randint(4, vocab_size, (args.batch, length), generator=g)
        bar_pos = torch.arange(length).repeat(args.batch, 1) % 16
        targets = tokens.roll(-1, 1)
        targets[doc != doc.roll(-1, 1)] = IGNORE
        for s in range(0, length, args.segment):
            w = slice(s, s + args.segment)
            yield tokens[:, w], targets[:, w], bar_pos[:, w], doc[:, w]


def trainer(
    model: nn.Module,
    data: Iterator,
    memory: bool,
    device: torch.device,
    state: MemoryState | None = None,
) -> Callable[[], None]:
    """One training step on the next segment (memories carried along from `state` when the
    model has any), on `device`: there under bf16 autocast when it is a GPU, as `Trainer`
    trains."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cuda = device.type == "cuda"

    def step() -> None:
        nonlocal state
        tokens, targets, bar_pos, doc = (x.to(device) for x in next(data))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            if isinstance(model, Reference):
                logits = model(tokens)
            else:
                logits, _, state = model(tokens, bar_pos, doc, state if memory else None)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:  # the step's kernels have run, not only been queued
            torch.cuda.synchronize(device)

    return step


def median_time(
    run: Callable[[], object], device: torch.device, warmup: int, repeats: int
) -> float:
    """Median seconds of `run()` (a CUDA synchronisation ends each timed call on a GPU)."""
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def faiss_search(memory: KNNMemory, queries: torch.Tensor, k: int) -> Callable[[], object] | None:
    """The search as it was before issue 25 (one Faiss IndexFlatIP per row and head, queries
    copied to the host, one call each): the reference the batched search is measured against."""
    try:
        import faiss
    except ImportError:
        return None
    indexes = []
    for row in range(memory.batch):
        keys = memory.stored(row)[0].cpu().numpy()
        indexes.append([faiss.IndexFlatIP(memory.head_dim) for _ in range(memory.n_head)])
        for h, index in enumerate(indexes[-1]):
            index.add(keys[h].copy())

    def search() -> None:
        asked = queries.float().cpu().numpy()
        for row, heads in enumerate(indexes):
            for h, index in enumerate(heads):
                index.search(asked[row, h].copy(), k)

    return search


def at_fill(
    model: MusicTransformer, fills: list[int], segment: tuple[torch.Tensor, ...], args, device
) -> tuple[float, float, float]:
    """(median xl_knn training step, median search alone, the Faiss reference's search) in
    seconds, row r's kNN memory holding `fills[r]` keys of its song before each step."""
    tokens, bar_pos, doc = segment
    config = model.config
    with torch.no_grad():
        _, _, state = model(tokens, bar_pos, doc, None)
        memory = state.slots["knn"]
        shape = (args.batch, config.n_head, max(fills), config.head_dim)
        keys = F.normalize(torch.randn(shape, device=device), dim=-1)
        for row in range(args.batch):
            memory.clear(row)
        memory.write(keys, keys, torch.zeros(args.batch, max(fills), dtype=torch.int64))

    def held() -> Iterator[tuple[torch.Tensor, ...]]:
        while True:
            memory.count = list(fills)  # hold the fill: steps overwrite the same room
            yield tokens, tokens.roll(-1, 1), bar_pos, doc

    step = trainer(model, held(), True, device, state)
    trained = median_time(step, device, args.warmup, args.steps * args.repeats)
    queries = F.normalize(torch.randn(*shape[:2], tokens.shape[1], shape[3], device=device), -1)
    memory.count = list(fills)
    searched = median_time(lambda: memory.search(queries, doc, config.knn_k), device, 1, 5)
    reference = faiss_search(memory, queries, config.knn_k) if device.type == "cpu" else None
    return trained, searched, median_time(reference, device, 1, 5) if reference else math.nan


def fill_table(args: argparse.Namespace, settings: dict, device: torch.device) -> None:
    """xl_knn's training step, and its kNN search alone, as the memory fills (issue 25: the
    step must stay flat as memory fills on a GPU, and grow no faster than the search's
    arithmetic on a CPU, which the 'predicted' column adds to the first row's step)."""
    config = ModelConfig(**{**settings, "knn_max_memories": max(args.fill)}, memory="xl_knn")
    torch.manual_seed(0)
    model = MusicTransformer(config)
    b_, t_ = args.batch, args.segment
    segment = (
        torch.randint(4, config.vocab_size, (b_, t_), device=device),
        torch.arange(t_, device=device).repeat(b_, 1) % 16,
        torch.zeros(b_, t_, dtype=torch.int64, device=device),  # one endless song per row
    )
    fills = {f"{fill:,}": [fill] * b_ for fill in args.fill}
    top = max(args.fill)  # a batch as training sees it: one row deep in a long song
    fills[f"{top:,} in one row, {top // 16:,} in the others"] = [top] + [top // 16] * (b_ - 1)
    rows = [
        (label, per_row, *at_fill(model, per_row, segment, args, device))
        for label, per_row in fills.items()
    ]
    step0, search0 = rows[0][2:4]
    where = f"{torch.get_num_threads()} threads"
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, bf16 autocast, torch {torch.__version__}"
    lines = [
        f"model: {config.n_layer} layers, {config.n_head} heads of {config.head_dim}, d_model "
        f"{config.d_model}, kNN k {config.knn_k}; batch {b_} x {t_}; {where}; synthetic "
        "song, memory held at the fill",
        "",
        "| keys per row | xl_knn step (s) | step / first | search (s) | search GFLOP | "
        "step predicted by the search (s) | Faiss per row and head (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, per_row, trained, searched, old in rows:
        gflop = 2 * sum(per_row) * config.n_head * t_ * config.head_dim / 1e9
        lines.append(
            f"| {label} | {trained:.3f} | {trained / step0:.2f}x | {searched:.4f} | {gflop:.2f} "
            f"| {step0 - search0 + searched:.3f} | {old:.4f} |"
        )
    report = "\n".join(lines)
    print(report)
    if args.results:
        name = "train-fill-cuda" if device.type == "cuda" else "train-fill"
        record(args.results, name, "# xl_knn step time as the kNN memory fills", report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--segment", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shards", type=Path, default=Path("data/shards/index"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="model section")
    parser.add_argument("--results", type=Path, help="write the table as its section there")
    parser.add_argument(
        "--device", default="cpu", help="cpu (default), or cuda / cuda:N: bf16 autocast there"
    )
    parser.add_argument(
        "--fill",
        type=int,
        nargs="+",
        metavar="KEYS",
        help="instead: xl_knn step and search time with the kNN memory holding KEYS per row",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":  # as training does on the CPU
        torch.set_flush_denormal(True)  # tiny gradients otherwise make CPU matmuls ~30x slower
        keep_freed_memory()

    # the pipeline's model (params.yaml), so the ratios hold for what `train` actually runs
    settings = {**load_params(args.params)["model"], "segment_len": args.segment}
    if args.fill:
        return fill_table(args, settings, device)
    base = ModelConfig(**settings)
    sides: dict[str, Callable[[], None]] = {}
    torch.manual_seed(0)
    sides["reference"] = trainer(
        Reference(base, base.dropout), segments(args, base.vocab_size), False, device
    )
    torch.manual_seed(0)
    sides["ref_noattn"] = trainer(
        Reference(base, 0.0), segments(args, base.vocab_size), False, device
    )
    for name, memory in (("vanilla", "none"), ("xl", "xl"), ("xl_knn", "xl_knn")):
        torch.manual_seed(0)
        config = ModelConfig(**settings, memory=memory)
        model = MusicTransformer(config)
        sides[name] = trainer(model, segments(args, config.vocab_size), memory != "none", device)
    for step in sides.values():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats * args.steps):  # one step of every side in turn: drift hits all
        for name, step in sides.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)

    tokens = args.batch * args.segment
    rate = {name: tokens / statistics.median(t) for name, t in times.items()}
    where = f"{torch.get_num_threads()} threads"
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, bf16 autocast, torch {torch.__version__}"
    lines = [
        f"model: {base.n_layer} layers, {base.n_head} heads, d_model {base.d_model}, d_ff "
        f"{base.d_ff}, dropout {base.dropout}, xl_mem_len {base.xl_mem_len}; batch {args.batch} x "
        f"{args.segment}; {where}; data: "
        f"{args.shards if args.shards.exists() else 'synthetic'}",
        "",
        "| side | median step (s) | tokens/s |",
        "|---|---:|---:|",
        *(
            f"| {name} | {statistics.median(t):.3f} | {rate[name]:,.0f} |"
            for name, t in times.items()
        ),
        "",
    ]
    gpu = device.type == "cuda"  # issue 25's targets: CPU here, or a GPU at batch 64
    for label, num, den, target in (
        ("vanilla / ref_noattn (same work)", "vanilla", "ref_noattn", 0.9 if gpu else 1.0),
        ("xl / vanilla", "xl", "vanilla", 0.8),
        ("xl_knn / vanilla", "xl_knn", "vanilla", 0.6 if gpu else 0.75),
    ):
        ratio = rate[num] / rate[den]
        verdict = "meets" if ratio >= target or math.isclose(ratio, target) else "MISSES"
        lines.append(f"- {label}: **{ratio:.2f}x** ({verdict} the >= {target}x target)")
    ratio = rate["vanilla"] / rate["reference"]
    lines.append(f"- vanilla / reference with attention dropout: {ratio:.2f}x (for information)")
    report = "\n".join(lines)
    print(report)
    if args.results:
        if device.type == "cuda":
            record(args.results, "train-cuda", "# Training throughput on a GPU", report)
        else:
            record(args.results, "train", "# Training throughput", report)


if __name__ == "__main__":
    main()
