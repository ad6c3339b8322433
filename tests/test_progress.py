"""Progress lines without a terminal (issue 24): a stage run by Snakemake or DVC says where it
is at least every EVERY_S seconds, in its log."""

from __future__ import annotations

import logging
import re
import time
from itertools import pairwise

from midigen.progress import LOG, Progress, progress


def test_lines_come_every_interval_with_counts_fields_and_time_left(caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    every, updates = 0.2, []
    with Progress("train xl", 40, "step", every_s=every) as shown:
        for step in range(40):
            time.sleep(0.025)
            shown.update(loss=f"{1 / (step + 1):.3f}")
            updates.append(time.time())  # the clock log records are stamped with
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "train xl: step 0/40 (0%)"
    assert re.fullmatch(r"train xl: 40 step done in 0m0\ds", lines[-1])
    for line in lines[1:-1]:
        assert re.fullmatch(r"train xl: step \d+/40 \(\d+%\), loss \d\.\d{3}, 0m0\ds left", line)
    # a line at most `every` plus one update's time after the one before
    stamps = [r.created for r in caplog.records]
    longest_update = max(b - a for a, b in pairwise(updates))
    assert max(b - a for a, b in pairwise(stamps[:-1])) <= every + longest_update + 0.01
    assert len(lines) - 2 >= (updates[-1] - stamps[0]) // (every + longest_update)


def test_an_iterable_is_counted_as_it_is_consumed(caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    assert list(progress(iter("abc"), "encode 0", 3, "file")) == ["a", "b", "c"]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "encode 0: file 0/3 (0%)"
    assert re.fullmatch(r"encode 0: 3 file done in 0m00s", lines[-1])


def test_a_disabled_counter_says_nothing(caplog):
    """Ranks other than 0 of a distributed run count silently."""
    caplog.set_level(logging.INFO, logger=LOG.name)
    with Progress("train", 2, "step", enabled=False, every_s=0) as shown:
        shown.update()
        shown.line()
    assert caplog.records == []
