"""How well a trained model predicts held-out songs, and how its music compares with the real one.

Likelihood metrics stream the test split exactly as validation does during training (whole
songs back to back per batch row, memories carried from segment to segment and cleared at
every song change), so numbers are comparable with the training curves. Every metric comes
from one table of per-target scores (`TokenScores`), which the n-gram baselines fill too.

The position of a prediction is the index, within its song, of the token it is made from
(0 = `<sos>`, predicting the first note): a prediction at position >= segment_len is made in a
later segment than its song's start, so only a memory can reach the song's beginning. Its offset
is that token's index inside its segment (what local attention sees of the past), and its reach
says how far back the n tokens ending there last occurred in the song: nowhere, inside the
segment, inside XL's memory, or beyond. Per song and probe cell the NLL sums go to songs.csv
(`midigen.evaluation.paired`), the material of every paired comparison between variants.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from numpy.lib.stride_tricks import sliding_window_view

from midigen.atomic import atomic_file
from midigen.data.batching import IGNORE, ContiguousBatches, played_twice
from midigen.data.corpus import Shard
from midigen.encodings import DecodeError, Scheme, decode_song, whole_rows
from midigen.errors import MidigenError
from midigen.evaluation import checks, musical
from midigen.evaluation.paired import CELLS, REACH, SongCells, mean_interval, ratio_interval
from midigen.generation.samples import SamplePrompt, Samples
from midigen.midi.files import Notes
from midigen.models.transformer import MusicTransformer
from midigen.progress import progress


@dataclass(frozen=True)
class TokenScores:
    """One row per predicted token: the raw material of every likelihood metric."""

    nll: np.ndarray  # nats
    target: np.ndarray  # the token id predicted
    position: np.ndarray  # index in its song of the token the prediction is made from
    song: np.ndarray  # index of the song in its shard
    correct: np.ndarray | None = None  # the model's most likely token was the target
    offset: np.ndarray | None = None  # models: index in its segment of the token predicted from
    reach: np.ndarray | None = None  # models: index into REACH (`with_reach`)


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


def likelihood_metrics(
    scores: TokenScores,
    scheme: Scheme,
    starts: Sequence[int],
    seconds: np.ndarray,
    sums: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """NLL (nats/token), perplexity, bits per note, bits per second and NLL by position: shared
    by models and baselines. Bits per note divide the total NLL by the number of notes
    predicted, which stays comparable between encodings that spend a different number of tokens
    per note; bits per second (the Anticipatory Music Transformer's measure) divide it by the
    songs' length at their own tempo (`seconds`, per song), comparable between time grids too.
    `sums`: `song_sums` of the scores when the caller has them already."""
    if len(scores.nll) == 0:
        raise MidigenError("nothing to evaluate: the test split has no tokens to predict")
    nll = float(scores.nll.mean())
    nll_sum, notes = song_sums(scores, scheme) if sums is None else sums
    bits, total = nll_sum / math.log(2), int(notes.sum())
    seconds = np.asarray(seconds, np.float64)[: len(bits)]
    return {
        "nll": nll,
        "perplexity": math.exp(nll),
        "bits_per_note": float(bits.sum() / total) if total else math.nan,
        "bits_per_note_interval": ratio_interval(bits, notes).as_dict(),
        "bits_per_second": float(bits.sum() / seconds.sum()) if seconds.sum() else math.nan,
        "bits_per_second_interval": ratio_interval(bits, seconds).as_dict(),
        "tokens_per_note": len(scores.nll) / total if total else math.nan,
        "nll_by_position": nll_by_position(scores, starts),
    }


def song_sums(scores: TokenScores, scheme: Scheme) -> tuple[np.ndarray, np.ndarray]:
    """Per song (shard index): the NLL of its predictions and the notes they predict."""
    songs = int(scores.song.max()) + 1 if len(scores.song) else 0
    nll_sum = np.bincount(scores.song, weights=scores.nll, minlength=songs)
    notes = np.bincount(scores.song, weights=scheme.note_counts(scores.target), minlength=songs)
    return nll_sum, notes


def loss_by_type(scores: TokenScores, scheme: Scheme) -> dict[str, float]:
    """Mean NLL per type of token predicted (the scheme's: note, duration, time_shift...)."""
    kinds = scheme.kinds(scores.target)
    return {str(name): float(scores.nll[kinds == name].mean()) for name in np.unique(kinds)}


# ---- scoring a model -----------------------------------------------------------------------


@torch.no_grad()
def score_model(
    model: MusicTransformer, shard: Shard, scheme: Scheme, batch_size: int
) -> TokenScores:
    """Per-target NLL, top-1 hit and segment offset of every token of `shard`, streamed as in
    validation."""
    device = next(model.parameters()).device
    batches = ContiguousBatches(
        shard,
        scheme,
        min(batch_size, len(shard.songs)),
        model.config.segment_len,
        shuffle=False,
        split="test",
    )
    state, nll, correct, targets, docs = None, [], [], [], []
    segments = batches.epoch(0)
    for segment in progress(segments, "score", len(segments), "segment"):
        segment = segment.to(device)
        logits, _, state = model(segment.tokens, segment.bar_pos, segment.doc, state)
        logits = logits.float()
        cells = F.cross_entropy(
            logits.flatten(0, -2), segment.targets.flatten(), ignore_index=IGNORE, reduction="none"
        ).view(segment.targets.shape)
        hits = logits.argmax(-1) == segment.targets
        if cells.dim() == 3:  # rows of fields: a row's NLL is its fields' sum, all must hit
            cells, hits = cells.sum(-1), hits.all(-1)
        nll.append(cells)
        correct.append(hits)
        targets.append(segment.targets)
        docs.append(segment.doc)
    nll, correct, targets, doc = (
        torch.cat(x, dim=1).cpu().numpy() for x in (nll, correct, targets, docs)
    )
    keep = (targets if targets.ndim == 2 else targets[..., 0]) != IGNORE
    column = np.broadcast_to(np.arange(doc.shape[1]), doc.shape)
    return TokenScores(
        nll[keep].astype(np.float64),
        targets[keep],
        _song_positions(doc)[keep],
        doc[keep],
        correct[keep],
        (column % model.config.segment_len)[keep],
    )


def _song_positions(doc: np.ndarray) -> np.ndarray:
    """(B, W) song ids of row streams -> each token's index inside its song."""
    index = np.broadcast_to(np.arange(doc.shape[1]), doc.shape)
    starts = np.ones(doc.shape, dtype=bool)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    return index - np.maximum.accumulate(np.where(starts, index, 0), axis=1)


# ---- where memory must show: repeated contexts, by how far back ----------------------------


def repeat_distance(tokens: np.ndarray, n: int) -> np.ndarray:
    """Per token p: p - q for the latest q < p where the n tokens ending at q equal those ending
    at p, else 0. A model that copies what followed them must look back that far."""
    tokens = np.asarray(tokens)
    if tokens.ndim == 2:  # rows of fields: one id per distinct row
        tokens = np.unique(tokens, axis=0, return_inverse=True)[1].reshape(-1)
    distance = np.zeros(len(tokens), dtype=np.int64)
    if len(tokens) < n:
        return distance
    _, gram = np.unique(sliding_window_view(tokens, n), axis=0, return_inverse=True)
    gram = gram.reshape(-1)  # n-gram id by its first token's index
    order = np.argsort(gram, kind="stable")  # each n-gram's occurrences, in song order
    again = gram[order[1:]] == gram[order[:-1]]
    distance[order[1:][again] + n - 1] = np.diff(order)[again]
    return distance


def reach_buckets(distance: np.ndarray, offset: np.ndarray, xl_mem_len: int) -> np.ndarray:
    """Index into REACH: no earlier occurrence (distance 0), inside the segment (local
    attention sees it), inside the segment plus xl_mem_len (XL's memory sees it), beyond."""
    inside = [distance == 0, distance <= offset, distance <= offset + xl_mem_len]
    return np.select(inside, [0, 1, 2], default=3)


def with_reach(scores: TokenScores, shard: Shard, n: int, xl_mem_len: int) -> TokenScores:
    """`scores` of `shard` (with offsets) plus the reach of each prediction's n-token context.

    `xl_mem_len` is passed in, the same for every variant, so that vanilla's buckets are
    xl's: what differs between variants is then only whether they use what lies there."""
    distance = np.concatenate(
        [repeat_distance(shard.tokens[shard.song(i)], n) for i in range(len(shard.offsets) - 1)]
    )
    context = distance[shard.offsets[scores.song] + scores.position]
    return replace(scores, reach=reach_buckets(context, scores.offset, xl_mem_len))


# ---- the repeat probe ----------------------------------------------------------------------


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
        tokens.append(played_twice(shard.tokens[span]))
        times += [song_times, song_times[1:] + song_times[-1]]
        bar_pos.append(played_twice(shard.bar_pos[span]))
    lengths = 2 * np.diff(shard.offsets) - 1
    return Shard(
        tokens=np.concatenate(tokens),
        times=np.concatenate(times),
        bar_pos=np.concatenate(bar_pos),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        songs=shard.songs,
    )


def second_copy(scores: TokenScores, lengths: np.ndarray) -> np.ndarray:
    """Which targets of `repeated` songs (song i first `lengths[i]` tokens long) belong to the
    second copy: each copy predicts lengths[i] - 1 targets."""
    return scores.position >= lengths[scores.song] - 1


def repeat_scores(
    model: MusicTransformer, shard: Shard, scheme: Scheme, batch_size: int
) -> tuple[TokenScores, np.ndarray]:
    """Scores of every song played twice (`repeated`) and which belong to the second copy."""
    scores = score_model(model, repeated(shard), scheme, batch_size)
    return scores, second_copy(scores, np.diff(shard.offsets))


def repeat_probe(
    model: MusicTransformer, shard: Shard, scheme: Scheme, batch_size: int
) -> dict[str, float]:
    """Mean NLL of the first and of the second copy of every song played twice.

    A model that can look back at the first copy predicts the second one far better; a model
    whose memory is shorter than the song cannot.
    """
    scores, second = repeat_scores(model, shard, scheme, batch_size)
    return {"first": float(scores.nll[~second].mean()), "second": float(scores.nll[second].mean())}


# ---- per song and probe cell ---------------------------------------------------------------


def song_table(
    scores: TokenScores,
    probe: TokenScores,
    second: np.ndarray,
    segment_len: int,
    songs: Sequence[str],
) -> SongCells:
    """Per song the NLL sum and token count of each of CELLS, from `scores` (with reach) and
    the repeat probe's scores (`second`: its second-copy targets)."""
    members = {
        "all": (scores, np.ones(len(scores.nll), dtype=bool)),
        "early": (scores, scores.position < segment_len),
        "late": (scores, scores.position >= segment_len),
        "repeat_first": (probe, ~second),
        "repeat_second": (probe, second),
        **{f"reach_{name}": (scores, scores.reach == code) for code, name in enumerate(REACH)},
    }
    columns = [members[cell] for cell in CELLS]
    n = len(songs)
    return SongCells(
        tuple(songs),
        np.stack(
            [np.bincount(s.song[m], weights=s.nll[m], minlength=n) for s, m in columns], axis=1
        ),
        np.stack([np.bincount(s.song[m], minlength=n) for s, m in columns], axis=1),
    )


@dataclass(frozen=True)
class Scored:
    """A model's scores of a test split: every token (with reach), and the repeat probe's."""

    shard: Shard
    scores: TokenScores
    probe: TokenScores  # scores of `repeated(shard)`
    second: np.ndarray  # which of `probe` belong to the second copy
    xl_mem_len: int  # the XL reach `scores.reach` was bucketed with


def score_split(
    model: MusicTransformer,
    shard: Shard,
    scheme: Scheme,
    batch_size: int,
    repeat_ngram: int,
    xl_mem_len: int,
) -> Scored:
    """Every score the likelihood metrics are made of (see the module docstring)."""
    scores = score_model(model, shard, scheme, batch_size)
    scores = with_reach(scores, shard, repeat_ngram, xl_mem_len)
    probe, second = repeat_scores(model, shard, scheme, batch_size)
    return Scored(shard, scores, probe, second, xl_mem_len)


def evaluate_model(
    model: MusicTransformer,
    shard: Shard,
    scheme: Scheme,
    starts: Sequence[int],
    batch_size: int,
    repeat_ngram: int,
    xl_mem_len: int,
) -> tuple[dict, SongCells]:
    """Every likelihood metric of a model on one split (see the module docstring), and the
    per-song table they are summed from."""
    check_buckets(starts)
    scored = score_split(model, shard, scheme, batch_size, repeat_ngram, xl_mem_len)
    return summarize_scores(scored, scheme, starts, model.config.segment_len, repeat_ngram)


def summarize_scores(
    scored: Scored, scheme: Scheme, starts: Sequence[int], segment_len: int, repeat_ngram: int
) -> tuple[dict, SongCells]:
    """The likelihood metrics of `scored`, and the per-song table they are summed from."""
    shard, scores, probe, second = scored.shard, scored.scores, scored.probe, scored.second
    table = song_table(scores, probe, second, segment_len, [s["sha256"] for s in shard.songs])
    nll_sum, notes = song_sums(scores, scheme)
    metrics = {
        **likelihood_metrics(scores, scheme, starts, shard.seconds(), (nll_sum, notes)),
        "songs": {  # for comparing encodings of the same songs (report)
            "sha256": [s["sha256"] for s in shard.songs[: len(notes)]],
            "nll_sum": nll_sum.tolist(),
            "notes": notes.astype(int).tolist(),
        },
        "accuracy": float(scores.correct.mean()),
        "loss_by_type": loss_by_type(scores, scheme),
        "early_nll": table.mean("early"),
        "late_nll": table.mean("late"),
        "late_from": segment_len,
        "repeat": {"first": table.mean("repeat_first"), "second": table.mean("repeat_second")},
        "repeat_ngram": repeat_ngram,
        "xl_mem_len": scored.xl_mem_len,
        "repeat_by_reach": {
            name: {
                "nll": table.mean(f"reach_{name}"),
                "tokens": int(table.cell(f"reach_{name}").tokens.sum()),
            }
            for name in REACH
        },
    }
    return metrics, table


# ---- generated against real music ----------------------------------------------------------


def continuation_notes(
    prompt: Sequence[int], continuation: Sequence[int], prompt_steps: int, scheme: Scheme
) -> Notes:
    """The notes a continuation adds after its prompt: those with onset >= prompt_steps.

    A continuation stopped by the length limit (whole rows, but no `<eos>`) ends there.
    """
    notes = decode_song(scheme, [*prompt, *continuation])
    keep = notes.onset >= prompt_steps
    return Notes(notes.onset[keep], notes.program[keep], notes.pitch[keep], notes.duration[keep])


def _continuations(samples: Samples, scheme: Scheme) -> dict[str, list[Notes]]:
    """The real and the generated continuation of every prompt, as notes."""
    pieces: dict[str, list[Notes]] = {"real": [], "generated": []}
    for prompt in samples.prompts:
        for kind, notes in pieces.items():
            try:
                notes.append(
                    continuation_notes(
                        prompt.tokens["prompt"], prompt.tokens[kind], prompt.prompt_steps, scheme
                    )
                )
            except DecodeError as e:
                raise MidigenError(
                    f"samples.json prompt {prompt.id}: the {kind} tokens do not decode ({e})"
                ) from None
    return pieces


def prompt_music(
    real: Notes, generated: Notes, steps_per_beat: int, bar_steps: int
) -> dict[str, dict[str, float]]:
    """One prompt's statistics of its real and generated continuations and the overlap of their
    histograms: the units resampled for the intervals over prompts."""
    counts = {
        kind: musical.histograms([n], steps_per_beat)
        for kind, n in (("real", real), ("generated", generated))
    }
    return {
        "real": musical.statistics(real, steps_per_beat, bar_steps),
        "generated": musical.statistics(generated, steps_per_beat, bar_steps),
        "overlap": {
            f: musical.overlap(counts["real"][f], counts["generated"][f]) for f in musical.FEATURES
        },
    }


def prompt_checks(
    prompt: SamplePrompt, samples: Samples, scheme: Scheme, index: checks.TrainingIndex
) -> dict[str, dict[str, float]]:
    """The field's checks (copying, looping, ending) of one prompt's generated continuation,
    and of its real one cut at the same length limit: like against like."""
    head = prompt.tokens["prompt"]
    cursor = scheme.grammar.parse(head)
    real = whole_rows(scheme.grammar, cursor, prompt.tokens["real"][: samples.length])
    checked = {}
    for kind, tokens in (("real", real), ("generated", prompt.tokens["generated"])):
        notes = continuation_notes(head, tokens, prompt.prompt_steps, scheme)
        checked[kind] = {
            **checks.check_continuation(
                scheme, index, head, tokens, notes, prompt.prompt_steps, prompt.bar_steps
            ),
            "ends": checks.ends(scheme, head, prompt.tokens[kind], samples.length),
        }
    return checked


def compare_music(
    samples: Samples, scheme: Scheme, index: checks.TrainingIndex
) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Per statistic of the real and generated continuations, per histogram overlap and per
    check (`index`: the training split's): the mean over prompts with its 95% bootstrap
    interval over prompts (a statistic undefined for a prompt leaves it out); and the
    histograms pooled over prompts ({"real"|"generated": {feature: counts}})."""
    steps_per_beat = samples.steps_per_beat
    pieces = _continuations(samples, scheme)
    per_prompt = [
        prompt_music(real, generated, steps_per_beat, prompt.bar_steps)
        for real, generated, prompt in zip(
            pieces["real"], pieces["generated"], samples.prompts, strict=True
        )
    ]
    per_prompt_checks = [prompt_checks(p, samples, scheme, index) for p in samples.prompts]
    keys = {
        "real": musical.STATISTICS,
        "generated": musical.STATISTICS,
        "overlap": musical.FEATURES,
    }
    metrics: dict = {"prompts": len(per_prompt)}
    for group, names in keys.items():
        metrics[group] = _over_prompts([p[group] for p in per_prompt], names)
    metrics["checks"] = {
        kind: _over_prompts([p[kind] for p in per_prompt_checks], checks.CHECKS)
        for kind in ("real", "generated")
    }
    counts = {kind: musical.histograms(p, steps_per_beat) for kind, p in pieces.items()}
    return metrics, counts


def _over_prompts(values: list[dict[str, float]], names: Sequence[str]) -> dict[str, dict]:
    """Per name, the mean of the prompts' values with its interval over prompts."""
    return {
        name: mean_interval(np.array([v[name] for v in values], dtype=np.float64)).as_dict()
        for name in names
    }


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
