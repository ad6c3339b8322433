"""Generation speed: the key/value cache against recomputing the context for every token.

    python bench/generate.py                     # default model (params.yaml), 512 tokens, CPU
    python bench/generate.py --repeats 5         # more timed runs per side
    python bench/generate.py --threads 2         # torch threads (default 1: a shared machine)
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
from midigen.generation.sampling import GenerateConfig, generate
from midigen.models.transformer import VARIANT_MEMORY, ModelConfig, MusicTransformer
from midigen.params import load_params
from midigen.stages.train import model_config

TARGET = 5.0


def prompt_and_scheme(shards: Path, bars: int, steps_per_beat: int) -> tuple[Prompt, Index, str]:
    """The first test song's opening bars (index shards), or a random prompt of notes on every
    beat."""
    if (shards / SCHEME_FILE).exists():
        scheme, shard = load_scheme(shards), load_shard(shards, "test")
        span = shard.song(0)
        prompt, _ = split_song(
            np.asarray(shard.tokens[span], np.int64),
            np.asarray(shard.times[span]),
            np.asarray(shard.bar_pos[span]),
            bars,
            steps_per_beat,
        )
        return prompt, scheme, f"first test song of {shards}, {bars} bars"
    vocab = Vocab(32)
    tokens, times = [vocab.sos], [0]
    for beat, pitch in enumerate(np.random.default_rng(0).integers(48, 80, 32)):
        tokens += [vocab.note(int(pitch)), vocab.duration(steps_per_beat)]
        tokens += [vocab.sep, vocab.duration(steps_per_beat)]  # on to the next beat
        times += [beat * steps_per_beat] * 4
    bar = 4 * steps_per_beat
    prompt = Prompt(np.array(tokens), np.array(times) % bar, bar)
    return prompt, Index(vocab), "random notes in 4/4"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=512, help="tokens drawn per run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side")
    parser.add_argument("--shards", type=Path, default=Path("data/shards/index"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--results", type=Path, help="write the table as its section there")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    params = load_params(args.params)
    prompt, scheme, source = prompt_and_scheme(
        args.shards, params["generate"]["prompt_bars"], params["encode"]["steps_per_beat"]
    )
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
    for variant, memory in VARIANT_MEMORY.items():
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
    report = "\n".join(lines)
    print(report)
    if args.results:
        record(args.results, "generate", "# Generation speed", report)


if __name__ == "__main__":
    main()
