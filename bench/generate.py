"""Generation speed: the key/value cache against recomputing the context for every token.

    python bench/generate.py                     # default model (params.yaml), 512 tokens, CPU
    python bench/generate.py --repeats 5         # more timed runs per side
    python bench/generate.py --threads 2         # torch threads (default 1: a shared machine)
    python bench/generate.py --prompts 16        # batch size of the batched table (default 8)
    python bench/generate.py --results bench/RESULTS.md  # also write its section there

Every side continues the same prompt (the first 4 bars of the first test song in data/shards/index;
random notes in 4/4 when there are no shards) with the same seed and sampling params, the
weights of models/VARIANT/model.pt when they fit the params.yaml model (else random ones), and
draws exactly `--length` tokens (min_length = length: no <eos>). Sides:
- `cached`: `generate(context=KVCache)`, one token per forward through the key/value cache;
- `recompute`: `generate(context=Recompute)`, every token re-runs its current context: for xl
  and xl_knn the current segment on top of the memories of the complete segments (kept, not
  recomputed), for vanilla the last segment_len tokens. The target is measured against this;
- `from start` (xl, xl_knn; one run, for information): every token re-runs the whole sequence
  segment by segment from the song's start, training's forward, as the tests' reference does.
Each side runs once untimed (warm-up), then the sides are timed in turns; the median run is
reported. `same` counts the leading tokens on which cached and recompute agree: all of them for
xl and xl_knn (their cache is exact). Vanilla's cache is exact only within its first window
(beyond it, it keeps keys a re-encoded window would drop: XL-like), so vanilla draws only the
tokens that fit its first window, where both sides do the same work and agree token for token.
Target: cached >= 5x recompute at the default context.

Reading a prompt (third table): seconds until the first token can be drawn, for the opening
bars and for a whole song (the first test song, or 600 random beats), read in segment-sized
forwards as generation does, against one token per forward (how vanilla read a prompt past its
first window before issue 27).

Batched (second table): `--prompts` prompts (the first test songs, or random ones of different
lengths) continued one at a time with `generate`, then all together as rows of one batch with
`generate_batch` (each prompt its own seed: the same tokens, `same` counts the prompts that
agree), every prompt drawing exactly `--length` tokens. Target: batched tokens/s >= 4x one at a
time at 8 prompts.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sections import record

from midigen.data.corpus import load_shard
from midigen.encodings.catalog import SCHEME_FILE, load_scheme
from midigen.encodings.index import Index
from midigen.encodings.scores import Vocab
from midigen.generation.contexts import KVCache, Recompute
from midigen.generation.prompts import Prompt, split_song
from midigen.generation.sampling import GenerateConfig, generate, generate_batch
from midigen.models.transformer import ModelConfig, MusicTransformer
from midigen.models.variants import transformer_variants
from midigen.params import load_params
from midigen.stages.train import model_config

TARGET = 5.0
BATCH_TARGET = 4.0


def prompts_and_scheme(
    shards: Path, count: int, bars: int, steps_per_beat: int
) -> tuple[list[Prompt], Index, str]:
    """The opening bars of the first `count` test songs (index shards), or random prompts of
    notes on every beat, the k-th 32 + 5k beats long."""
    if (shards / SCHEME_FILE).exists():
        scheme, shard = load_scheme(shards), load_shard(shards, "test")
        prompts = []
        for k in range(min(count, len(shard.songs))):
            span = shard.song(k)
            prompt, _ = split_song(
                np.asarray(shard.tokens[span], np.int64),
                np.asarray(shard.times[span]),
                np.asarray(shard.bar_pos[span]),
                bars,
                steps_per_beat,
            )
            prompts.append(prompt)
        return prompts, scheme, f"first test songs of {shards}, {bars} bars"
    vocab = Vocab(32)
    return (
        [random_prompt(vocab, 32 + 5 * k, steps_per_beat, seed=k) for k in range(count)],
        Index(vocab),
        "random notes in 4/4",
    )


def random_prompt(vocab: Vocab, beats: int, steps_per_beat: int, seed: int) -> Prompt:
    """A note on every beat, random pitches."""
    tokens, times = [vocab.sos], [0]
    for beat, pitch in enumerate(np.random.default_rng(seed).integers(48, 80, beats)):
        tokens += [vocab.note(int(pitch)), vocab.duration(steps_per_beat)]
        tokens += [vocab.sep, vocab.duration(steps_per_beat)]  # on to the next beat
        times += [beat * steps_per_beat] * 4
    bar = 4 * steps_per_beat
    return Prompt(np.array(tokens), np.array(times) % bar, bar)


class FromStart:
    """No cache and no carried memory: every call runs the whole sequence again, segment by
    segment from the song's start (training's forward; the tests' reference)."""

    def __init__(self, model: MusicTransformer):
        self.model, self.tokens, self.bar_pos = model, None, None

    def feed(self, tokens: torch.Tensor, bar_pos: torch.Tensor) -> torch.Tensor:
        if self.tokens is not None:
            tokens, bar_pos = (
                torch.cat([self.tokens, tokens], 1),
                torch.cat([self.bar_pos, bar_pos], 1),
            )
        self.tokens, self.bar_pos, state = tokens, bar_pos, None
        for s in range(0, tokens.shape[1], self.model.config.segment_len):
            segment = slice(s, s + self.model.config.segment_len)
            logits, _, state = self.model(tokens[:, segment], bar_pos[:, segment], state=state)
        return logits[:, -1]

    def select(self, rows: torch.Tensor) -> None:
        self.tokens, self.bar_pos = self.tokens[rows], self.bar_pos[rows]


def load(variant: str, params: dict, scheme: Index) -> tuple[MusicTransformer, str]:
    """Trained weights when models/index/VARIANT/model.pt has the default config (named by the
    file and the start of its sha256), else random ones."""
    config = model_config(params, variant, scheme.fields, params["encode"]["steps_per_beat"])
    torch.manual_seed(0)
    model = MusicTransformer(config)
    path = Path("models") / scheme.name / variant / "model.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        if ModelConfig(**saved["model_config"]) == config:
            model.load_state_dict(saved["model"])
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
            return model.eval(), f"{path} ({digest})"
    return model.eval(), "random (seed 0)"


def one_at_a_time(model, prompts: list[Prompt], scheme, config) -> list[list[int]]:
    return [
        generate(model, prompt, scheme, config, seed=config.seed + k).tokens
        for k, prompt in enumerate(prompts)
    ]


def batched(model, prompts: list[Prompt], scheme, config) -> list[list[int]]:
    return [g.tokens for g in generate_batch(model, prompts, scheme, config)]


def batched_table(
    prompts: list[Prompt], scheme: Index, params: dict, length: int, repeats: int
) -> list[str]:
    """The batched table's lines: per variant, `prompts` continued one at a time and as one
    batch, `length` tokens each, the median of `repeats` timed runs per side."""
    settings = {**params["generate"], "length": length, "min_length": length}
    config = GenerateConfig.from_params(settings)
    sizes = sorted(len(prompt.tokens) for prompt in prompts)
    lines = [
        "",
        f"Batched: {len(prompts)} prompts of {sizes[0]} to {sizes[-1]} tokens, {length} tokens "
        "drawn per prompt (no <eos>), each prompt seeded generate.seed + its index.",
        "",
        "| variant | weights | prompts | tokens | one at a time tok/s | batched tok/s | speed-up "
        "| same | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for variant in transformer_variants():
        model, weights = load(variant, params, scheme)

        sides = {"one": one_at_a_time, "batched": batched}
        for side in sides.values():  # warm-up
            side(model, prompts, scheme, config)
        runs: dict[str, list[float]] = {side: [] for side in sides}
        drawn: dict[str, list[list[int]]] = {}
        for _ in range(repeats):
            for side, run in sides.items():
                started = time.perf_counter()
                drawn[side] = run(model, prompts, scheme, config)
                runs[side].append(time.perf_counter() - started)
        tokens = len(prompts) * length
        rate = {side: tokens / statistics.median(t) for side, t in runs.items()}
        same = sum(a == b for a, b in zip(drawn["one"], drawn["batched"], strict=True))
        speedup = rate["batched"] / rate["one"]
        verdict = "meets" if speedup >= BATCH_TARGET else "MISSES"
        lines.append(
            f"| {variant} | {weights} | {len(prompts)} | {tokens} | {rate['one']:,.1f} | "
            f"{rate['batched']:,.1f} | **{speedup:.2f}x** | {same}/{len(prompts)} | "
            f"{verdict} >= {BATCH_TARGET:g}x |"
        )
    return lines


def read_seconds(model: MusicTransformer, prompt: Prompt, step: int | None) -> float:
    """Seconds to read `prompt` into a fresh KVCache: whole (step None: as generation does,
    in segment-sized forwards) or `step` tokens per forward (1: vanilla's path before)."""
    tokens = torch.as_tensor(np.asarray(prompt.tokens, np.int64))[None]
    bar_pos = torch.as_tensor(np.asarray(prompt.bar_pos, np.int64))[None]
    step = step or tokens.shape[1]
    cache = KVCache(model)
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, tokens.shape[1], step):
            cache.feed(tokens[:, start : start + step], bar_pos[:, start : start + step])
    return time.perf_counter() - started


def prompt_table(
    prompts: dict[str, Prompt], scheme: Index, params: dict, repeats: int
) -> list[str]:
    """Issue 27: seconds to read a prompt before the first token is drawn, by its length,
    read as generation reads it against one token per forward."""
    lines = [
        "",
        f"Reading a prompt (`KVCache.feed`, before the first token is drawn; median of {repeats}):",
        "",
        "| variant | prompt | tokens | segment-sized forwards (s) | one token per forward (s) |",
        "|---|---|---:|---:|---:|",
    ]
    for variant in transformer_variants():
        model, _ = load(variant, params, scheme)
        for name, prompt in prompts.items():
            read_seconds(model, prompt, None)  # warm-up
            now = statistics.median(read_seconds(model, prompt, None) for _ in range(repeats))
            one = statistics.median(read_seconds(model, prompt, 1) for _ in range(repeats))
            lines.append(f"| {variant} | {name} | {len(prompt.tokens)} | {now:.3f} | {one:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=512, help="tokens drawn per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side")
    parser.add_argument("--shards", type=Path, default=Path("data/shards/index"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--prompts", type=int, default=8, help="prompts of the batched table")
    parser.add_argument("--results", type=Path, help="write the table as its section there")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    params = load_params(args.params)
    prompts, scheme, source = prompts_and_scheme(
        args.shards,
        args.prompts,
        params["generate"]["prompt_bars"],
        params["encode"]["steps_per_beat"],
    )
    prompt = prompts[0]
    m = params["model"]
    lines = [
        f"model: {m['n_layer']} layers, {m['n_head']} heads, d_model {m['d_model']}, d_ff "
        f"{m['d_ff']}, segment_len {m['segment_len']}, xl_mem_len {m['xl_mem_len']}; prompt: "
        f"{len(prompt.tokens)} tokens ({source}); temperature "
        f"{params['generate']['temperature']}, top_k {params['generate']['top_k']}, top_p "
        f"{params['generate']['top_p']}; {torch.get_num_threads()} threads; CPU",
        "",
        "| variant | weights | tokens | cached tok/s | recompute tok/s | speed-up | same "
        "| from start tok/s | speed-up | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    sides = {"cached": KVCache, "recompute": Recompute}
    for variant, memory in transformer_variants().items():
        model, weights = load(variant, params, scheme)
        # vanilla: only what fits its first window, where both sides do the same work
        length = args.length if memory != "none" else m["segment_len"] - len(prompt.tokens)
        settings = {**params["generate"], "length": length, "min_length": length}
        config = GenerateConfig.from_params(settings)
        for context in sides.values():  # warm-up
            generate(model, prompt, scheme, config, context=context)
        runs: dict[str, list[float]] = {side: [] for side in sides}
        drawn: dict[str, list[int]] = {}
        for _ in range(args.repeats):
            for side, context in sides.items():
                started = time.perf_counter()
                drawn[side] = generate(model, prompt, scheme, config, context=context).tokens
                runs[side].append(time.perf_counter() - started)
        rate = {side: length / statistics.median(t) for side, t in runs.items()}
        pairs = zip(drawn["cached"], drawn["recompute"], strict=True)
        same = next((i for i, (a, b) in enumerate(pairs) if a != b), length)
        speedup = rate["cached"] / rate["recompute"]
        verdict = "meets" if speedup >= TARGET else "MISSES"
        from_start = "- | -"
        if memory != "none":  # vanilla's window is its whole context: nothing more to redo
            started = time.perf_counter()
            generate(model, prompt, scheme, config, context=FromStart)
            slow = length / (time.perf_counter() - started)
            from_start = f"{slow:,.1f} | {rate['cached'] / slow:.2f}x"
        lines.append(
            f"| {variant} | {weights} | {length} | {rate['cached']:,.1f} | "
            f"{rate['recompute']:,.1f} | **{speedup:.2f}x** | {same}/{length} | {from_start} | "
            f"{verdict} >= {TARGET:g}x |"
        )
    lines += batched_table(prompts, scheme, params, args.length, args.repeats)
    whole, _, _ = prompts_and_scheme(args.shards, 1, 10**9, params["encode"]["steps_per_beat"])
    if not (args.shards / SCHEME_FILE).exists():  # a long random song: 600 beats
        whole = [random_prompt(Vocab(32), 600, params["encode"]["steps_per_beat"], seed=0)]
    bars = f"{params['generate']['prompt_bars']} bars"
    lines += prompt_table({bars: prompt, "whole song": whole[0]}, scheme, params, args.repeats)
    report = "\n".join(lines)
    print(report)
    if args.results:
        record(args.results, "generate", "# Generation speed", report)


if __name__ == "__main__":
    main()
