"""How well a trained model predicts held-out songs, and how its music compares with the real one.

Likelihood metrics stream the test split exactly as validation does during training (whole
songs back to back per batch row, memories carried from segment to segment and cleared at
every song change), so numbers are comparable with the training curves. Every metric comes
from one table of per-target scores (`TokenScores`), which the n-gram baselines fill too.

The position of a prediction is the index, within its song, of the token it is made from
(0 = `<sos>`, predicting the first note): a prediction at position >= segment_len is made in a
later segment than its song's start, so only a memory can reach the song's beginning.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from midigen import musical
from midigen.atomic import atomic_file
from midigen.batching import IGNORE, ContiguousBatches
from midigen.corpus import Shard
from midigen.encoding import DecodeError, Vocab, decode_tokens
from midigen.errors import MidigenError, read_json
from midigen.midi import Notes
from midigen.model import MusicTransformer

KIND_NAMES = ("eos", "note", "duration", "separator", "program")  # by Vocab.kinds() code; the
# only special token ever predicted is <eos> (<sos> starts every song, <pad> is never a target)


@dataclass(frozen=True)
class TokenScores:
    """One row per predicted token: the raw material of every likelihood metric."""

    nll: np.ndarray  # nats
    target: np.ndarray  # the token id predicted
    position: np.ndarray  # index in its song of the token the prediction is made from
    song: np.ndarray  # index of the song in its shard
    correct: np.ndarray | None = None  # the model's most likely token was the target


# ---- metrics from scores -------------------------------------------------------------------


def check_buckets(starts: Sequence[int]) -> None:
    """Bucket starts must partition all positions: from 0, increasing."""
    if not starts or starts[0] != 0 or any(np.diff(starts) <= 0):
        raise MidigenError(
            f"evaluate.position_buckets must start at 0 and increase (got {list(starts)})"
        )


def bucket_labels(starts: Sequence[int]) -> list[str]:
    """'0-127', '128-255', ..., '1024+' for starts [0, 128, 256, 1024]."""
    ends = [f"-{b - 1}" for b in starts[1:]] + ["+"]
    return [f"{a}{end}" for a, end in zip(starts, ends, strict=True)]


def nll_by_position(scores: TokenScores, starts: Sequence[int]) -> dict[str, float]:
    """Mean NLL of the predictions in each position bucket (buckets with none are left out)."""
    check_buckets(starts)
    bucket = np.searchsorted(np.asarray(starts), scores.position, side="right") - 1
    return {
        label: float(scores.nll[bucket == i].mean())
        for i, label in enumerate(bucket_labels(starts))
        if (bucket == i).any()
    }


def likelihood_metrics(scores: TokenScores, vocab: Vocab, starts: Sequence[int]) -> dict:
    """NLL (nats/token), perplexity, bits per note and NLL by position: shared by models and
    baselines. Bits per note divide the total NLL by the number of notes predicted, which stays
    comparable between encodings that spend a different number of tokens per note."""
    if len(scores.nll) == 0:
        raise MidigenError("nothing to evaluate: the test split has no tokens to predict")
    nll = float(scores.nll.mean())
    notes = int(np.count_nonzero(vocab.kinds()[scores.target] == KIND_NAMES.index("note")))
    return {
        "nll": nll,
        "perplexity": math.exp(nll),
        "bits_per_note": float(scores.nll.sum() / math.log(2) / notes) if notes else math.nan,
        "nll_by_position": nll_by_position(scores, starts),
    }


def loss_by_type(scores: TokenScores, vocab: Vocab) -> dict[str, float]:
    """Mean NLL per kind of token predicted (note, duration, separator, eos, program)."""
    kinds = vocab.kinds()[scores.target]
    return {
        name: float(scores.nll[kinds == code].mean())
        for code, name in enumerate(KIND_NAMES)
        if (kinds == code).any()
    }


# ---- scoring a model -----------------------------------------------------------------------


@torch.no_grad()
def score_model(
    model: MusicTransformer, shard: Shard, vocab: Vocab, batch_size: int
) -> TokenScores:
    """Per-target NLL and top-1 hit of every token of `shard`, streamed as in validation."""
    device = next(model.parameters()).device
    batches = ContiguousBatches(
        shard,
        vocab,
        min(batch_size, len(shard.songs)),
        model.config.segment_len,
        shuffle=False,
        split="test",
    )
    state, nll, correct, targets, docs = None, [], [], [], []
    for segment in batches.epoch(0):
        segment = segment.to(device)
        logits, _, state = model(segment.tokens, segment.bar_pos, segment.doc, state)
        logits = logits.float()
        nll.append(
            F.cross_entropy(
                logits.transpose(1, 2), segment.targets, ignore_index=IGNORE, reduction="none"
            )
        )
        correct.append(logits.argmax(-1) == segment.targets)
        targets.append(segment.targets)
        docs.append(segment.doc)
    nll, correct, targets, doc = (
        torch.cat(x, dim=1).cpu().numpy() for x in (nll, correct, targets, docs)
    )
    keep = targets != IGNORE
    return TokenScores(
        nll[keep].astype(np.float64),
        targets[keep],
        _song_positions(doc)[keep],
        doc[keep],
        correct[keep],
    )


def _song_positions(doc: np.ndarray) -> np.ndarray:
    """(B, W) song ids of row streams -> each token's index inside its song."""
    index = np.broadcast_to(np.arange(doc.shape[1]), doc.shape)
    starts = np.ones(doc.shape, dtype=bool)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    return index - np.maximum.accumulate(np.where(starts, index, 0), axis=1)


def repeated(shard: Shard) -> Shard:
    """Every song played twice in a row as ONE song, so memories survive into the second copy.

    The second copy starts right after the first copy's `<eos>` and has no `<sos>` of its own:
    both copies then predict the same targets (the song's tokens after `<sos>`), and the jump
    from `<eos>` back to the first note counts towards the second copy.
    """
    tokens, times, bar_pos = [], [], []
    for i in range(len(shard.songs)):
        span = shard.song(i)
        song_times = np.asarray(shard.times[span])
        tokens += [shard.tokens[span], shard.tokens[span][1:]]
        times += [song_times, song_times[1:] + song_times[-1]]
        bar_pos += [shard.bar_pos[span], shard.bar_pos[span][1:]]
    lengths = 2 * np.diff(shard.offsets) - 1
    return Shard(
        tokens=np.concatenate(tokens),
        times=np.concatenate(times),
        bar_pos=np.concatenate(bar_pos),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        songs=shard.songs,
    )


def repeat_probe(model: MusicTransformer, shard: Shard, vocab: Vocab, batch_size: int) -> dict:
    """Mean NLL of the first and of the second copy of every song played twice (`repeated`).

    A model that can look back at the first copy predicts the second one far better; a model
    whose memory is shorter than the song cannot.
    """
    scores = score_model(model, repeated(shard), vocab, batch_size)
    second = scores.position >= np.diff(shard.offsets)[scores.song] - 1
    return {"first": float(scores.nll[~second].mean()), "second": float(scores.nll[second].mean())}


def evaluate_model(
    model: MusicTransformer, shard: Shard, vocab: Vocab, starts: Sequence[int], batch_size: int
) -> dict:
    """Every likelihood metric of a model on one split (see the module docstring)."""
    check_buckets(starts)
    scores = score_model(model, shard, vocab, batch_size)
    late = scores.position >= model.config.segment_len
    return {
        **likelihood_metrics(scores, vocab, starts),
        "accuracy": float(scores.correct.mean()),
        "loss_by_type": loss_by_type(scores, vocab),
        "late_nll": float(scores.nll[late].mean()) if late.any() else math.nan,
        "late_from": model.config.segment_len,
        "repeat": repeat_probe(model, shard, vocab, batch_size),
    }


# ---- generated against real music ----------------------------------------------------------


def load_samples(folder: Path) -> dict:
    """samples/V/samples.json (written by `midigen generate`), checked for what we read."""
    path = Path(folder) / "samples.json"
    samples = read_json(path, f"{path}: not found (run midigen generate first)")
    problem = _samples_problem(samples)
    if problem:
        raise MidigenError(f"{path}: {problem}")
    return samples


def _samples_problem(samples) -> str | None:
    """What a samples.json lacks of what evaluate reads, or None."""
    if not isinstance(samples, dict) or not {"steps_per_beat", "prompts"} <= samples.keys():
        return "not a samples file (needs steps_per_beat and prompts)"
    for i, prompt in enumerate(samples["prompts"]):
        missing = [f for f in ("id", "prompt_steps", "bar_steps", "tokens") if f not in prompt]
        tokens = prompt.get("tokens", {})
        missing += [
            f"tokens.{kind}" for kind in ("prompt", "real", "generated") if kind not in tokens
        ]
        if missing:
            return f"prompt {prompt.get('id', i)} has no {', '.join(missing)}"
    return None


def continuation_notes(
    prompt: Sequence[int], continuation: Sequence[int], prompt_steps: int, vocab: Vocab
) -> Notes:
    """The notes a continuation adds after its prompt: those with onset >= prompt_steps.

    A continuation stopped by the length limit (whole rows, but no `<eos>`) ends there.
    """
    tokens = [*prompt, *continuation]
    if not tokens or tokens[-1] != vocab.eos:
        tokens.append(vocab.eos)
    notes = decode_tokens(tokens, vocab)
    keep = notes.onset >= prompt_steps
    return Notes(notes.onset[keep], notes.program[keep], notes.pitch[keep], notes.duration[keep])


def compare_music(samples: dict, vocab: Vocab) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Statistics of the generated and the real continuations, the overlap of their
    histograms, and the histograms themselves ({"real"|"generated": {feature: counts}})."""
    steps_per_beat = samples["steps_per_beat"]
    pieces: dict[str, list[Notes]] = {"real": [], "generated": []}
    for prompt in samples["prompts"]:
        for kind, notes in pieces.items():
            try:
                notes.append(
                    continuation_notes(
                        prompt["tokens"]["prompt"],
                        prompt["tokens"][kind],
                        prompt["prompt_steps"],
                        vocab,
                    )
                )
            except DecodeError as e:
                raise MidigenError(
                    f"samples.json prompt {prompt['id']}: the {kind} tokens do not decode ({e})"
                ) from None
    bar_steps = [prompt["bar_steps"] for prompt in samples["prompts"]]
    counts = {kind: musical.histograms(p, steps_per_beat) for kind, p in pieces.items()}
    metrics: dict = {
        kind: musical.mean_statistics(p, steps_per_beat, bar_steps) for kind, p in pieces.items()
    }
    metrics["overlap"] = {
        f: musical.overlap(counts["real"][f], counts["generated"][f]) for f in musical.FEATURES
    }
    return metrics, counts


# ---- outputs -------------------------------------------------------------------------------


def _json_safe(value):
    """NaN (a statistic with too few notes) becomes null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(path: Path, metrics: dict) -> None:
    with atomic_file(path) as f:
        f.write(json.dumps(_json_safe(metrics), indent=2, allow_nan=False) + "\n")


AXIS_LABELS = {
    "pitch": "MIDI pitch",
    "duration": "duration (steps)",
    "ioi": "inter-onset interval (steps)",
    "polyphony": "notes sounding",
}


def write_plots(
    folder: Path,
    title: str,
    by_position: dict[str, float],
    counts: dict[str, dict[str, np.ndarray]],
) -> None:
    """nll_by_position.csv/.png and histograms.csv/.png (shares of each histogram, real vs
    generated, over the bins where either has any) into an existing folder."""
    with open(folder / "nll_by_position.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["bucket", "nll"])
        writer.writerows(by_position.items())
    shares = {
        kind: {f: c / c.sum() if c.sum() else c.astype(np.float64) for f, c in hist.items()}
        for kind, hist in counts.items()
    }
    with open(folder / "histograms.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["feature", "bin", "real", "generated"])
        for feature in musical.FEATURES:
            real, generated = shares["real"][feature], shares["generated"][feature]
            for b in _used_bins(real, generated):
                writer.writerow([feature, b, f"{real[b]:.6g}", f"{generated[b]:.6g}"])

    figure = Figure(figsize=(6, 3.5), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(list(by_position), list(by_position.values()), marker="o")
    ax.set_xlabel("position in song (tokens)")
    ax.set_ylabel("NLL (nats/token)")
    ax.set_title(f"{title}: NLL by position")
    figure.savefig(folder / "nll_by_position.png", dpi=100)

    figure = Figure(figsize=(10, 6), layout="constrained")
    for ax, feature in zip(figure.subplots(2, 2).flat, musical.FEATURES, strict=True):
        real, generated = shares["real"][feature], shares["generated"][feature]
        bins = _used_bins(real, generated)
        ax.step(bins, real[bins], where="mid", label="real")
        ax.step(bins, generated[bins], where="mid", label="generated")
        ax.set_xlabel(AXIS_LABELS[feature])
        ax.set_ylabel("share")
    ax.legend()
    figure.suptitle(f"{title}: generated vs real continuations")
    figure.savefig(folder / "histograms.png", dpi=100)


def _used_bins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """From the first to the last bin where either histogram has anything."""
    used = np.flatnonzero((a > 0) | (b > 0))
    return np.arange(used[0], used[-1] + 1) if len(used) else np.zeros(0, dtype=np.int64)
