"""The versioned HTML report: every variant side by side, samples to hear and see, run history.

Each call builds one run, `OUT/runs/<run-id>/` (self-contained: its page, copies of the media
and images it shows, and run.json with params, code version and a metrics summary; never
rewritten), then rewrites `OUT/index.html`: the latest run and the list of all runs with the
params that changed and how the main metrics moved. Pages load nothing from outside (inline
CSS, no script) and every string is escaped by the template engine.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import numpy as np
import yaml
from matplotlib.figure import Figure

from midigen.atomic import atomic_dir, atomic_file
from midigen.errors import MidigenError, read_json
from midigen.evaluation.paired import (
    CACHE_FOLDER,
    CELLS,
    CONTRASTS,
    REACH,
    SONGS_CSV,
    SongCells,
    memory_effect,
    paired_difference,
    paired_ratio_difference,
    read_song_cells,
)
from midigen.generation.samples import SAMPLES_JSON, SamplePrompt, Samples, read_samples
from midigen.registry import REFERENCE
from midigen.report.history import (
    code_version,
    history,
    load_runs,
    new_run_id,
    short_version,
)
from midigen.report.verdict import (
    CACHE_CELLS,
    CELL_LABELS,
    CONTRAST_LABELS,
    answer_sentences,
    cache_outcome,
    effect_outcome,
    floor_verdict,
    format_interval,
    memory_verdict,
    plot_forest,
)

log = logging.getLogger(__name__)

EVAL_PLOTS = ("histograms.png",)  # per variant (NLL by position: one chart of all)
EVAL_KEYS = (  # what the report reads from metrics/S/eval/V.json
    "nll",
    "perplexity",
    "bits_per_note",
    "bits_per_second",
    "accuracy",
    "nll_by_position",
    "early_nll",
    "late_nll",
    "late_from",
    "repeat.first",
    "repeat.second",
    "repeat_ngram",
    "xl_mem_len",
    "copy_cache.order",
    "copy_cache.weight",
    "copy_cache.nll",
    "copy_cache.bits_per_note",
    "seeds",
    *(f"repeat_by_reach.{r}.nll" for r in REACH),
)
# Metrics summarized per variant in run.json and compared between runs: (key, label).
NOTE_CHANGE_LABELS = {  # midi.NOTE_CHANGES, as the report names them
    "drums": "on the drum channel: dropped",
    "duplicate": "same tick, key and instrument as another: dropped",
    "merged": "same step, key and instrument after the grid: dropped",
    "zero_length": "zero length: stretched to one step",
    "stretched": "shorter than half a step: stretched to one step",
    "cut_max_duration": "longer than encode.max_duration: cut",
    "cut_restrike": "still sounding when its key strikes again: cut",
}
FILE_REPAIR_LABELS = {  # midi.FILE_REPAIRS, as the report names them
    "smpte": "SMPTE time, read on a 120-bpm beat grid",
    "sequences": "type 2: sequences played one after another",
    "lenient": "refused or misread by the fast parser: read leniently",
    "clipped_bytes": "data bytes above 127 clipped",
    "skipped_events": "undefined status bytes or senseless meta events skipped",
    "running_status_resumed": "running status carried over a sysex or meta event",
    "meter_ignored": "time signatures on a later track than the meter's: ignored",
}


@dataclass(frozen=True)
class ReportInputs:
    """Where the stages before the report left their outputs, one folder per token scheme in
    each (`branch`)."""

    metrics: Path  # S/train/V/ (DVCLive), S/eval/V.json, S/baselines.json
    plots: Path  # S/eval/V/*.png
    samples: Path  # S/V/samples.json and the media it names
    shards: Path  # S/stats.json: what encoding skipped, dropped, changed

    def branch(self, scheme: str) -> ReportInputs:
        """The outputs of one scheme's branch of the DAG."""
        return ReportInputs(*(getattr(self, f.name) / scheme for f in fields(self)))


@dataclass(frozen=True)
class Variant:
    """Everything the report shows about one trained variant."""

    name: str
    train: dict[str, Any]  # DVCLive metrics.json (last values)
    curves: dict[str, tuple[list[float], list[float]]]  # train_loss / val_loss: (steps, values)
    eval: dict[str, Any]  # metrics/S/eval/V.json
    songs: SongCells  # plots/S/eval/V/songs.csv
    cache_songs: SongCells  # plots/S/eval/V/cache/songs.csv: with the copy cache mixed in
    seed_songs: dict[int, SongCells]  # per training seed (the main one's is `songs`)
    plots: Path  # plots/S/eval/V
    samples: Samples  # samples/S/V/samples.json
    samples_dir: Path


@dataclass(frozen=True)
class Built:
    """What one report run produced."""

    run_id: str
    run_dir: Path
    index: Path
    prompts: int
    memory: str  # the headline of the memory verdict


# --- reading the inputs ----------------------------------------------------------------------


def _missing(path: Path, why: str) -> str:
    return f"missing {path} ({why})"


def _existing(path: Path, why: str) -> Path:
    if not path.exists():
        raise MidigenError(_missing(path, why))
    return path


def _read_json(path: Path, why: str) -> Any:
    return read_json(path, _missing(path, why))


def _field(data: dict, dotted: str, source: Path) -> Any:
    """data['a']['b'] for 'a.b', or one clear error naming the file and the key."""
    value: Any = data
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise MidigenError(f"{source}: missing key '{dotted}'")
        value = value[key]
    return value


def _read_curve(path: Path, column: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one DVCLive plot TSV."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    try:
        return [float(r["step"]) for r in rows], [float(r[column]) for r in rows]
    except (KeyError, TypeError, ValueError):
        raise MidigenError(f"{path}: expected columns 'step' and '{column}'") from None


def _plain_name(name: Any, source: Path) -> str:
    """A media file name from samples.json, refused if it could point outside its folder."""
    if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
        raise MidigenError(f"{source}: bad media file name {name!r}")
    return name


def load_variant(name: str, inputs: ReportInputs) -> Variant:
    """Read one variant's train metrics, eval metrics, plots and samples (all must exist)."""
    trained = f"was variant '{name}' trained? run `midigen train --variant {name}`"
    evaluated = f"run `midigen evaluate --variant {name}`"
    generated = f"run `midigen generate --variant {name}`"
    train_dir = inputs.metrics / "train" / name
    train = _read_json(train_dir / "metrics.json", trained)
    curves = {}
    for column in ("train_loss", "val_loss"):
        tsv = train_dir / "plots" / "metrics" / f"{column}.tsv"
        if column == "train_loss" or tsv.exists():  # no val_loss.tsv when it never validated
            curves[column] = _read_curve(_existing(tsv, trained), column)
    eval_path = inputs.metrics / "eval" / f"{name}.json"
    metrics = _read_json(eval_path, evaluated)
    for key in EVAL_KEYS:
        _field(metrics, key, eval_path)
    plots = inputs.plots / "eval" / name
    for png in EVAL_PLOTS:
        _existing(plots / png, evaluated)
    songs = read_song_cells(plots / SONGS_CSV)
    cache_songs = read_song_cells(plots / CACHE_FOLDER / SONGS_CSV)
    seed_songs = {}
    for entry in metrics["seeds"]:
        seed, folder = _field(entry, "seed", eval_path), _field(entry, "folder", eval_path)
        seed_songs[seed] = read_song_cells(plots / folder / SONGS_CSV) if folder else songs
    samples_dir = inputs.samples / name
    samples_path = samples_dir / SAMPLES_JSON
    _existing(samples_path, generated)
    samples = read_samples(samples_dir)
    for prompt in samples.prompts:
        for files in prompt.files.values():
            # wav None: no audio, and samples.json says why (renderer)
            for file_name in (files.mid, files.png, *([files.wav] if files.wav else [])):
                _existing(samples_dir / _plain_name(file_name, samples_path), generated)
    return Variant(
        name, train, curves, metrics, songs, cache_songs, seed_songs, plots, samples, samples_dir
    )


def _check_same_prompts(variants: list[Variant]) -> None:
    """Continuations are only comparable when every variant continued the same prompts."""
    first = variants[0]
    songs = [(p.id, p.song, p.prompt_steps) for p in first.samples.prompts]
    for other in variants[1:]:
        theirs = [(p.id, p.song, p.prompt_steps) for p in other.samples.prompts]
        if theirs != songs:
            raise MidigenError(
                f"{other.samples_dir / 'samples.json'} continues other prompts than "
                f"{first.samples_dir / 'samples.json'}: re-run generate for both"
            )


# --- what the numbers say --------------------------------------------------------------------


def summarize(variants: list[Variant], baselines: dict[str, Any]) -> dict[str, Any]:
    """The numbers kept in run.json and compared between runs."""
    summary: dict[str, Any] = {"variants": {}, "baselines": {}}
    for v in variants:
        summary["variants"][v.name] = {
            "nll": v.eval["nll"],
            "perplexity": v.eval["perplexity"],
            "bits_per_note": v.eval["bits_per_note"],
            "bits_per_second": v.eval["bits_per_second"],
            "accuracy": v.eval["accuracy"],
            "early_nll": v.eval["early_nll"],
            "late_nll": v.eval["late_nll"],
            "repeat_first": v.eval["repeat"]["first"],
            "repeat_second": v.eval["repeat"]["second"],
            **{f"reach_{r}_nll": v.eval["repeat_by_reach"][r]["nll"] for r in REACH},
            "nll_by_seed": {str(e["seed"]): e["nll"] for e in v.eval["seeds"]},
            "val_loss": v.train.get("val_loss"),
            "tokens_per_s": v.samples.tokens_per_s,
        }
    for name, entry in baselines.items():
        summary["baselines"][name] = {
            key: entry.get(key) for key in ("nll", "perplexity", "bits_per_note", "bits_per_second")
        }
    summary["songs"] = len(variants[0].songs.songs)
    summary["tokens"] = {c: int(variants[0].songs.cell(c).tokens.sum()) for c in CELLS}
    summary["vs_vanilla"] = compare_with_vanilla(variants)
    base = vanilla_of(variants)
    if base is not None:
        cache = base.eval["copy_cache"]
        summary["copy_cache"] = {k: cache[k] for k in ("order", "weight", "nll", "bits_per_note")}
    return summary


def data_summary(stats: dict[str, Any], source: Path) -> dict[str, Any]:
    """What the data stages did to the user's music (shard's stats.json), for run.json."""
    notes = _field(stats, "notes", source)
    return {
        "songs": sum(split["songs"] for split in _field(stats, "splits", source).values()),
        "skipped": _field(stats, "skipped", source),
        "notes": {k: notes[k] for k in ("read", "kept", "dropped", "changed", "by_cause")},
        "flag_lost_fraction": notes["flag_lost_fraction"],
        "flagged": notes["flagged"],
        "flagged_worst": notes["flagged_worst"],
        "repairs": {
            FILE_REPAIR_LABELS[name]: entry
            for name, entry in _field(stats, "repairs", source).items()
            if entry["files"]
        },
    }


def _data_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per cause of a dropped or changed note: count and share of the notes read."""
    read = data["notes"]["read"]
    return [
        {"cause": label, "notes": count, "share": count / read if read else None}
        for cause, label in NOTE_CHANGE_LABELS.items()
        for count in [data["notes"]["by_cause"].get(cause, 0)]
    ]


def vanilla_of(variants: list[Variant]) -> Variant | None:
    """The variant every other is compared with, if this run trained it."""
    return next((v for v in variants if v.name == REFERENCE), None)


def compare_with_vanilla(variants: list[Variant]) -> dict[str, dict[str, Any]]:
    """Per variant against vanilla on the same test songs: the paired difference on every cell
    and every memory effect (`midigen.evaluation.paired`), each {"mean", "low", "high"}."""
    base = vanilla_of(variants)
    compared = {}
    for v in variants:
        if base is None or v is base:
            continue
        if v.songs.songs != base.songs.songs:
            raise MidigenError(
                f"{v.plots / SONGS_CSV} scores other songs than {base.plots / SONGS_CSV}: "
                "re-run evaluate for both"
            )
        seeds = [s for s in v.seed_songs if s in base.seed_songs]  # paired by seed too
        compared[v.name] = {
            "cells": {
                c: paired_difference(v.songs.cell(c), base.songs.cell(c)).as_dict() for c in CELLS
            },
            "vs_cache": {  # against the sceptic's reference: vanilla plus a copy cache
                c: paired_difference(v.songs.cell(c), base.cache_songs.cell(c)).as_dict()
                for c in CACHE_CELLS
            },
            "effects": {c: memory_effect(v.songs, base.songs, c).as_dict() for c in CONTRASTS},
            "seeds": seeds,
            "seed_cells": {
                c: [_finite(v.seed_songs[s].mean(c) - base.seed_songs[s].mean(c)) for s in seeds]
                for c in CELLS
            },
        }
    return compared


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined mean (a cell without tokens) is None."""
    return value if math.isfinite(value) else None


# --- pictures --------------------------------------------------------------------------------


def plot_losses(variants: list[Variant], out: Path) -> None:
    """Train loss (thin) and validation loss (dots) of every variant on one chart."""
    fig = Figure(figsize=(9, 4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for i, v in enumerate(variants):
        color = f"C{i}"
        steps, losses = v.curves["train_loss"]
        ax.plot(steps, losses, color=color, alpha=0.4, linewidth=0.8, label=f"{v.name} train")
        if "val_loss" in v.curves:
            steps, losses = v.curves["val_loss"]
            ax.plot(steps, losses, "o-", color=color, label=f"{v.name} validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(out, format="png")


def plot_nll_by_position(variants: list[Variant], out: Path) -> None:
    """Test NLL per position bucket for every variant on one chart: where memory should help."""
    fig = Figure(figsize=(9, 4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for i, v in enumerate(variants):
        buckets = v.eval["nll_by_position"]
        ax.plot(list(buckets), list(buckets.values()), "o-", color=f"C{i}", label=v.name)
    ax.set_xlabel("token position in the song")
    ax.set_ylabel("NLL (nats/token)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(out, format="png")


# --- the pages -------------------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("midigen.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda x, digits=3: "\u2014" if x is None else f"{x:.{digits}f}"
    env.filters["interval"] = format_interval
    env.filters["signed"] = lambda x: "\u2014" if x is None else f"{x:+.3f}"
    env.filters["percent"] = lambda x: "\u2014" if x is None else f"{100 * x:.1f}%"
    return env


def _copy_media(variants: list[Variant], run_dir: Path) -> list[dict[str, Any]]:
    """Copy every sample file into the run; describe each prompt's rows for the template.

    Prompt and real continuation are the same for every variant: they come from the first.
    """
    prompts = []
    for i, prompt in enumerate(variants[0].samples.prompts):
        rows = [
            _media_row(variants[0], prompt, kind, label, run_dir, "media")
            for kind, label in (("prompt", "prompt"), ("real", "real continuation"))
        ]
        rows += [
            _media_row(v, v.samples.prompts[i], "generated", v.name, run_dir, f"media/{v.name}")
            for v in variants
        ]
        bars = prompt.prompt_steps // prompt.bar_steps
        prompts.append(
            {"id": prompt.id, "title": prompt.title, "source": prompt.source, "bars": bars}
            | {"rows": rows}
        )
    return prompts


def _media_row(
    variant: Variant, prompt: SamplePrompt, kind: str, label: str, run_dir: Path, folder: str
) -> dict[str, Any]:
    """Copy one sample's files to run_dir/folder; their URLs relative to the run's page."""
    (run_dir / folder).mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"label": label, "no_audio": variant.samples.renderer}
    for ext in ("mid", "wav", "png"):
        name = getattr(prompt.files[kind], ext)
        row[ext] = None if name is None else quote(f"{folder}/{name}")
        if name is not None:
            shutil.copy2(variant.samples_dir / name, run_dir / folder / name)
    return row


def _eval_plots(variants: list[Variant], run_dir: Path) -> list[dict[str, Any]]:
    """Copy each variant's evaluation PNGs into the run."""
    shown = []
    for v in variants:
        (run_dir / "plots" / v.name).mkdir(parents=True, exist_ok=True)
        for png in EVAL_PLOTS:
            shutil.copy2(v.plots / png, run_dir / "plots" / v.name / png)
        pngs = [(quote(f"plots/{v.name}/{p}"), p.removesuffix(".png")) for p in EVAL_PLOTS]
        shown.append({"variant": v.name, "pngs": pngs})
    return shown


METRIC_COLUMNS = (  # (key, label, decimals)
    ("nll", "NLL (nats/token)", 3),
    ("perplexity", "perplexity", 2),
    ("bits_per_note", "bits/note", 3),
    ("bits_per_second", "bits/second", 2),
    ("accuracy", "top-1 accuracy", 3),
    ("early_nll", "early NLL", 3),
    ("late_nll", "late NLL", 3),
    ("repeat_first", "repeat: 1st copy NLL", 3),
    ("repeat_second", "repeat: 2nd copy NLL", 3),
    ("val_loss", "final val loss", 3),
    ("tokens_per_s", "generation tokens/s", 1),
)


def _metric_rows(summary: dict[str, Any], baselines: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant, then one per baseline (only the columns a baseline has)."""
    rows = [
        {"name": name, "kind": "variant", **values} for name, values in summary["variants"].items()
    ]
    for name, values in summary["baselines"].items():
        order = baselines[name].get("order")
        label = f"{name} baseline" + (f" (order {order})" if order is not None else "")
        rows.append({"name": label, "kind": "baseline", **values})
    if "copy_cache" in summary:
        cache = summary["copy_cache"]
        label = f"vanilla + copy cache (order {cache['order']}, weight {cache['weight']})"
        rows.append({"name": label, "kind": "baseline", **cache})
    return rows


def _table(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{row name: {column: value}} -> columns (union, first-seen order) and rows for a table."""
    columns = list(dict.fromkeys(key for values in rows.values() for key in values))
    return {"columns": columns, "rows": rows}


def _music_tables(variants: list[Variant]) -> dict[str, Any]:
    """Musical features of real vs generated continuations, and histogram overlaps: means over
    prompts with their 95% intervals."""
    music = {v.name: v.eval.get("music") for v in variants if v.eval.get("music")}
    if not music:
        return {}
    first = next(iter(music.values()))
    features = {"real": first.get("real", {})}
    features |= {f"{name} (generated)": m.get("generated", {}) for name, m in music.items()}
    overlap = {name: m.get("overlap", {}) for name, m in music.items()}
    checks = {"real": first.get("checks", {}).get("real", {})}
    checks |= {
        f"{name} (generated)": m.get("checks", {}).get("generated", {}) for name, m in music.items()
    }
    return {
        "prompts": first.get("prompts"),
        "features": _table(features),
        "overlap": _table(overlap),
        "checks": _table(checks),
    }


def _memory_tables(summary: dict[str, Any], probe: dict[str, Any]) -> dict[str, Any]:
    """Paired differences against vanilla per cell, the memory effects, and NLL by reach;
    `probe` (one variant's eval metrics) gives the sizes the cells are cut at."""
    compared, tokens = summary["vs_vanilla"], summary["tokens"]
    return {
        "variants": list(compared),
        "songs": summary["songs"],
        "segment_len": probe["late_from"],
        "repeat_ngram": probe["repeat_ngram"],
        "xl_mem_len": probe["xl_mem_len"],
        "cells": [
            {
                "label": CELL_LABELS[c],
                "tokens": tokens[c],
                "values": {n: compared[n]["cells"][c] for n in compared},
                "seeds": {n: compared[n]["seed_cells"][c] for n in compared},
            }
            for c in CELLS
        ],
        "seeds": {n: compared[n]["seeds"] for n in compared},
        "vs_cache": [
            {
                "label": CELL_LABELS[c],
                "values": {n: compared[n]["vs_cache"][c] for n in compared},
                "outcomes": {n: cache_outcome(compared[n]["vs_cache"][c]) for n in compared},
            }
            for c in CACHE_CELLS
        ],
        "effects": [
            {
                "label": CONTRAST_LABELS[c][0],
                "values": {n: compared[n]["effects"][c] for n in compared},
                "outcomes": {n: effect_outcome(compared[n]["effects"][c]) for n in compared},
            }
            for c in CONTRASTS
        ],
        "reach": [
            {
                "label": CELL_LABELS[f"reach_{r}"],
                "tokens": tokens[f"reach_{r}"],
                "values": {n: v[f"reach_{r}_nll"] for n, v in summary["variants"].items()},
            }
            for r in REACH
        ],
    }


def scheme_summary(params: dict[str, Any], inputs: ReportInputs) -> list[dict[str, Any]]:
    """Bits per note of every scheme x variant (and each scheme's best baseline) with its 95%
    interval over test songs; for the schemes after the first, the paired difference from the
    first scheme's same variant on the songs both encoded (encodings compared); and for the
    variants after the reference (vanilla, if trained), the paired difference from the
    reference in the same scheme (models compared)."""
    schemes, variants, rows = params["encode"]["schemes"], params["train"]["variants"], []
    reference = reference_variant(variants)
    first: dict[str, dict[str, Any]] = {}  # variant -> the first scheme's per-song sums
    for scheme in schemes:
        branch = inputs.branch(scheme)
        songs_of = {}
        for variant in [reference, *(v for v in variants if v != reference)]:
            path = branch.metrics / "eval" / f"{variant}.json"
            metrics = _read_json(path, f"run `midigen evaluate --scheme {scheme}`")
            songs = songs_of[variant] = _field(metrics, "songs", path)
            first.setdefault(variant, songs)
            rows.append(
                {
                    "scheme": scheme,
                    "name": variant,
                    "kind": "variant",
                    **_rates(metrics, path),
                    "vs_first": None if scheme == schemes[0] else _vs(songs, first[variant]),
                    "vs_reference": None
                    if variant == reference
                    else _vs(songs, songs_of[reference]),
                }
            )
        path = branch.metrics / "baselines.json"
        baselines = _read_json(path, f"run `midigen baselines --scheme {scheme}`")
        name, best = min(baselines.items(), key=lambda item: item[1]["bits_per_note"])
        rows.append({"scheme": scheme, "name": f"{name} baseline", "kind": "baseline"})
        rows[-1] |= {**_rates(best, path), "vs_first": None, "vs_reference": None}
    return rows


def reference_variant(variants: list[str]) -> str:
    """The variant the others are compared with: vanilla where it was trained."""
    return REFERENCE if REFERENCE in variants else variants[0]


def _rates(metrics: dict[str, Any], source: Path) -> dict[str, Any]:
    keys = ("bits_per_note", "bits_per_note_interval", "nll", "tokens_per_note")
    return {key: _field(metrics, key, source) for key in keys}


def _vs(songs: dict[str, list], first: dict[str, list]) -> dict[str, float | None]:
    """Bits per note of `songs` minus `first`'s, paired by song (the songs both hold)."""
    index = {sha: i for i, sha in enumerate(songs["sha256"])}
    mine = [(index[sha], j) for j, sha in enumerate(first["sha256"]) if sha in index]
    a, b = (np.array(pair, dtype=np.int64) for pair in zip(*mine, strict=True))
    bits = np.log(2)
    return paired_ratio_difference(
        (np.asarray(songs["nll_sum"])[a] / bits, np.asarray(songs["notes"])[a]),
        (np.asarray(first["nll_sum"])[b] / bits, np.asarray(first["notes"])[b]),
    ).as_dict()


def _page(
    params: dict[str, Any],
    record: dict[str, Any],
    variants: list[Variant],
    baselines: dict[str, Any],
    run_dir: Path,
) -> dict[str, Any]:
    """Everything the template shows about one run; copies and draws its files into run_dir."""
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    plot_losses(variants, run_dir / "plots" / "loss.png")
    plot_nll_by_position(variants, run_dir / "plots" / "nll_by_position.png")
    plot_forest(record["summary"], run_dir / "plots" / "forest.png")
    renderers = {v.name: v.samples.renderer for v in variants if v.samples.renderer}
    prompts = _copy_media(variants, run_dir)
    return {
        "title": params.get("report", {}).get("title", "midigen"),
        "run": record,
        "code": short_version(record["code"]),
        "memory": record["summary"]["memory"],
        "answer": record["summary"]["answer"],
        "featured": prompts[0] if prompts else None,
        "floor": record["summary"].get("floor"),
        "metric_columns": METRIC_COLUMNS,
        "metric_rows": _metric_rows(record["summary"], baselines),
        "schemes": record["summary"]["schemes"],
        "primary": params["encode"]["schemes"][0],
        "reference": reference_variant(params["train"]["variants"]),
        "loss_by_type": _table({v.name: v.eval.get("loss_by_type", {}) for v in variants}),
        "paired": _memory_tables(record["summary"], variants[0].eval),
        "copy_cache": record["summary"].get("copy_cache"),
        "music": _music_tables(variants),
        "eval_plots": _eval_plots(variants, run_dir),
        "renderers": renderers,
        "prompts": prompts,
        "params_yaml": yaml.safe_dump(params, sort_keys=False),
        "data": record["summary"]["data"],
        "data_rows": _data_rows(record["summary"]["data"]),
    }


def build_report(
    params: dict[str, Any], inputs: ReportInputs, out: Path, now: datetime | None = None
) -> Built:
    """Build one run under out/runs/<run-id>/ and rewrite out/index.html (see module doc)."""
    schemes = scheme_summary(params, inputs)
    inputs = inputs.branch(params["encode"]["schemes"][0])  # the details: the first scheme's
    variants = [load_variant(name, inputs) for name in params["train"]["variants"]]
    _check_same_prompts(variants)
    baselines = _read_json(inputs.metrics / "baselines.json", "run `midigen baselines`")
    summary = summarize(variants, baselines)
    stats_path = inputs.shards / "stats.json"
    summary["data"] = data_summary(_read_json(stats_path, "run `midigen shard`"), stats_path)
    headline, details = memory_verdict(summary)
    summary["memory"] = {"headline": headline, "details": details}
    summary["answer"] = answer_sentences(summary)
    summary["floor"] = floor_verdict(summary)
    summary["schemes"] = schemes
    now = now or datetime.now(timezone.utc)
    record = {
        "created": now.isoformat(timespec="milliseconds"),
        "params": params,
        "code": code_version(),
        "summary": summary,
    }
    run_id = new_run_id(now, record)
    record = {"id": run_id, **record}
    runs = history([*load_runs(out / "runs"), record])
    run_dir = out / "runs" / run_id
    if run_dir.exists():
        raise MidigenError(f"{run_dir} already exists (runs are never rewritten)")
    template = _environment().get_template("report.html.j2")
    with atomic_dir(run_dir) as tmp:
        page = _page(params, record, variants, baselines, tmp)
        (tmp / "run.json").write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "index.html").write_text(template.render(page, base="", latest=runs[0], runs=None))
    with atomic_file(out / "index.html") as f:
        f.write(template.render(page, base=f"runs/{run_id}/", latest=runs[0], runs=runs))
    return Built(run_id, run_dir, out / "index.html", len(page["prompts"]), headline)
