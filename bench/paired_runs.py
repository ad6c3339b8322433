"""One variant of two runs on the same test songs, paired song by song: did a change help?

    python bench/paired_runs.py BEFORE/plots/index/eval/xl_knn AFTER/plots/index/eval/xl_knn \
        [--base AFTER/plots/index/eval/vanilla]

Reads each folder's songs.csv (`midigen evaluate`) and prints, per probe cell, the mean NLL
(nats/token) of both runs and AFTER - BEFORE with its 95% bootstrap interval over songs; with
`--base`, each run minus that base too (e.g. vanilla, unchanged between the runs). The two
runs must have scored the same songs (the same test split), or it says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from midigen.evaluation.paired import CELLS, SONGS_CSV, Interval, paired_difference
from midigen.evaluation.paired import read_song_cells as read


def show(value: Interval) -> str:
    return f"{value.mean:+.3f} [{value.low:+.3f}, {value.high:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path, help="plots/SCHEME/eval/VARIANT of the first run")
    parser.add_argument("after", type=Path, help="... of the second run")
    parser.add_argument("--base", type=Path, help="... of a variant to subtract from both")
    args = parser.parse_args()
    before, after = read(args.before / SONGS_CSV), read(args.after / SONGS_CSV)
    base = read(args.base / SONGS_CSV) if args.base else None
    if any(t.songs != before.songs for t in (after, base) if t is not None):
        sys.exit("the runs scored different test songs: nothing to pair")
    header = "| cell | tokens | before | after | after - before |"
    if base:
        header += " before - base | after - base |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for cell in CELLS:
        tokens = int(before.cell(cell).tokens.sum())
        row = [cell, f"{tokens:,}", f"{before.mean(cell):.3f}", f"{after.mean(cell):.3f}"]
        row.append(show(paired_difference(after.cell(cell), before.cell(cell))))
        if base:
            row += [show(paired_difference(t.cell(cell), base.cell(cell))) for t in (before, after)]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
