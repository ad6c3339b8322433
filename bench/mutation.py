"""Mutation testing of the core modules with mutmut: the score per module and every survivor.

    python bench/mutation.py                          # run (reusing mutants/ where unchanged)
    python bench/mutation.py --fresh --results bench/RESULTS.md   # from scratch, and record

mutmut (configured in pyproject.toml, [tool.mutmut]) copies src/ into mutants/, makes small
changes to the code (a `<` for a `<=`, a constant plus one, an argument dropped...) and runs
the fast tests that reach each changed function; a mutant that no test fails "survived".
Here only the functions that decide what users believe are mutated (MUTANTS below): the
encoding, the memories and attention, evaluation and baselines, the download's checks and the
report's escaping and verdicts; not the figures (matplotlib calls whose mutants only change
how a plot looks, and cost most of the run). Survivors reviewed as equivalent (no test can
tell them apart: same behaviour) are listed with the reason in
bench/mutation_equivalent.txt; the score is killed / (all - equivalent), target >= 90% per
module. Run outside CI (it takes about an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from sections import record

REPO = Path(__file__).resolve().parent.parent
EQUIVALENT = Path(__file__).resolve().parent / "mutation_equivalent.txt"
TARGET = 0.90

# mutmut names a mutant <module>.x_<function>__mutmut_<n> (methods: xǁClassǁmethod).
MUTANTS = {
    "encoding": ["midigen.encodings.scores.*"],
    "memory": ["midigen.models.memory.*"],
    "model (attention, memories)": [
        "midigen.models.kernels.*",
        "midigen.models.positions.*",
        "midigen.models.transformer.x_token_loss__mutmut_*",
        *(
            f"midigen.models.transformer.x\u01c1{cls}\u01c1*"
            for cls in (
                "Attention", "KNNAttention", "Block", "SegmentTrace", "Memory", "XLRecurrence",
                "KNNRetrieval", "MusicTransformer",
            )
        ),
    ],
    "evaluate": [
        "midigen.evaluation.likelihood.x\u01c1TokenScores\u01c1*",
        *(
            f"midigen.evaluation.likelihood.x_{name}__mutmut_*"
            for name in (
                "check_buckets", "bucket_labels", "nll_by_position", "likelihood_metrics",
                "loss_by_type", "score_model", "_song_positions", "repeat_distance",
                "reach_buckets", "with_reach", "repeated", "second_copy", "repeat_scores",
                "repeat_probe", "song_table", "evaluate_model", "load_samples",
                "_samples_problem", "continuation_notes", "_continuations", "prompt_music",
                "compare_music", "_json_safe", "write_metrics", "_used_bins",
            )  # not write_plots: figures (its tables are checked by hand in test_evaluate)
        ),
    ],
    "baselines": ["midigen.evaluation.baselines.*"],
    "paired (intervals)": ["midigen.evaluation.paired.*"],
    "musical": ["midigen.evaluation.musical.*"],
    "download (checks)": [
        f"midigen.data.download.x_{name}__mutmut_*"
        for name in (
            "split_of", "_is_midi", "_dir_entries", "_read_inside", "_fetched", "_fetch",
            "_refuse", "_check_name", "_check_tar_member", "_check_zip_member",
            "_read_capped", "_budgeted",
        )
    ],
    "report (escaping, verdicts)": [
        *(f"midigen.report.build.x_{name}__mutmut_*" for name in ("_environment", "_plain_name")),
        *(
            f"midigen.report.verdict.x_{name}__mutmut_*"
            for name in (
                "format_interval", "effect_outcome", "memory_verdict", "cache_sentence",
                "cache_outcome", "floor_verdict", "answer_sentences", "_relative",
            )  # not plot_forest: a figure
        ),
    ],
    # issue 30: the files the record skipped
    "encodings (events, codebook, bpe)": [
        f"midigen.encodings.{module}.*" for module in ("events", "codebook", "bpe")
    ],
    "training": [
        *(f"midigen.models.training.x_{name}__mutmut_*" for name in ("seed_runs", "lr_at")),
        *(
            f"midigen.models.training.x\u01c1Trainer\u01c1{name}__mutmut_*"
            for name in ("_forward", "train_step", "_val_segments", "evaluate")
        ),
    ],
    "sampling": [
        f"midigen.generation.sampling.x_{name}__mutmut_*"
        for name in ("sample", "_draw", "_sample_rows", "_scored", "_log_probs", "_beam_search")
    ],
    "copy cache, generation checks": [
        "midigen.evaluation.cache.*",
        *(
            f"midigen.evaluation.checks.x_{name}__mutmut_*"
            for name in ("suffix_array", "copying", "bar_starts", "bar_sets", "looping", "ends")
        ),
        "midigen.evaluation.checks.x\u01c1TrainingIndex\u01c1*",
    ],
}  # fmt: skip


def group_of(mutant: str) -> str | None:
    from fnmatch import fnmatchcase

    for group, patterns in MUTANTS.items():
        if any(fnmatchcase(mutant, p) for p in patterns):
            return group
    return None


def equivalents() -> dict[str, str]:
    """Reviewed survivors: mutant name -> why no test can fail it."""
    found = {}
    for line in EQUIVALENT.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition(" ")
            found[name] = reason.strip()
    return found


def run_mutmut(patterns: list[str]) -> None:
    """mutmut runs every mutant matching `patterns`, even those with a result already."""
    # One thread per child: mutmut forks, and a forked OpenMP pool deadlocks (false timeouts).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(["mutmut", "run", *patterns], cwd=REPO, env=env, check=True)


def results() -> dict[str, str]:
    """Mutant name -> mutmut's status (killed, survived, no tests, timeout, ...)."""
    out = subprocess.run(
        ["mutmut", "results", "--all", "true"], cwd=REPO, capture_output=True, text=True
    ).stdout
    statuses = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and group_of(name):
            statuses[name] = status
    return statuses


def summarize(
    statuses: dict[str, str], reviewed: dict[str, str], groups: list[str]
) -> tuple[str, list[str]]:
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for name, status in sorted(statuses.items()):
        group = group_of(name)
        if status in ("killed", "timeout"):  # a mutant that hangs the tests is caught
            counts[group]["killed"] += 1
        elif name in reviewed:
            counts[group]["equivalent"] += 1
        else:
            counts[group][status] += 1
            survivors.append((name, status))
    rows = [
        "| module | mutants | killed | equivalent | survived | no tests | not checked | score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for group in groups:
        c = counts[group]
        total = sum(c.values())
        scored = total - c["equivalent"]
        score = c["killed"] / scored if scored else float("nan")
        verdict = "" if score >= TARGET else " MISSES"
        rows.append(
            f"| {group} | {total} | {c['killed']} | {c['equivalent']} | {c['survived']} | "
            f"{c['no tests']} | {c['not checked']} | {score:.1%}{verdict} |"
        )
    return "\n".join(rows), survivors


def by_function(survivors: list[tuple[str, str]]) -> list[str]:
    """One line per mutated function: how many of its mutants survived, and how."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for name, status in survivors:
        counts[name.rpartition("__mutmut_")[0]][status] += 1
    return [
        f"- `{function}`: " + ", ".join(f"{n} {status}" for status, n in sorted(c.items()))
        for function, c in sorted(counts.items())
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="delete mutants/ first")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="run again only the mutants the last run left alive (after adding tests)",
    )
    parser.add_argument("--no-run", action="store_true", help="only summarize the last run")
    parser.add_argument(
        "--groups",
        nargs="+",
        choices=list(MUTANTS),
        default=list(MUTANTS),
        metavar="GROUP",
        help="run and record only these groups of MUTANTS (their own RESULTS section)",
    )
    parser.add_argument("--results", type=Path, default=None, help="write its RESULTS section")
    args = parser.parse_args(argv)
    if args.fresh:
        shutil.rmtree(REPO / "mutants", ignore_errors=True)
    if args.survivors:
        alive = [
            name
            for name, status in results().items()
            if group_of(name) in args.groups and status not in ("killed", "timeout")
        ]
        if alive:
            run_mutmut(alive)
    elif not args.no_run:
        run_mutmut([p for group in args.groups for p in MUTANTS[group]])
    reviewed = equivalents()
    statuses = {n: s for n, s in results().items() if group_of(n) in args.groups}
    stale = sorted(n for n in reviewed if statuses.get(n) not in (None, "survived"))
    table, survivors = summarize(statuses, reviewed, args.groups)
    every = args.groups == list(MUTANTS)
    run = "python bench/mutation.py --fresh" + ("" if every else " --groups ...")
    source = (
        f"the mutants/ of the last run (`{run}` and any `--survivors` after it, on this "
        "commit's src), summarized; "
        if args.no_run
        else ""
    )
    report = (
        f"{source}mutmut {mutmut_version()}, mutants in the functions listed in "
        "bench/mutation.py, the fast tests named in pyproject.toml [tool.mutmut]; score = "
        "killed / (mutants - "
        f"equivalent), target >= {TARGET:.0%}. Equivalent mutants and why: "
        "bench/mutation_equivalent.txt.\n\n"
        f"{table}\n\nSurvivors not reviewed as equivalent: {len(survivors)}, by function "
        "(`mutmut show NAME` for each):\n\n" + "\n".join(by_function(survivors))
    )
    print(report)
    if stale:
        print("listed as equivalent but not surviving (remove them):", *stale, sep="\n  ")
    if args.results:
        name = "mutation" if every else "mutation-" + "-".join(map(_slug, args.groups))
        heading = "# Mutation testing" + ("" if every else " of " + "; ".join(args.groups))
        record(args.results, name, heading, report)


def _slug(group: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in group.split(" (")[0].split(",")[0])


def mutmut_version() -> str:
    from importlib import metadata

    return metadata.version("mutmut")


if __name__ == "__main__":
    sys.exit(main())
