"""Progress lines without a terminal (issue 24): a stage run by Snakemake or DVC says where it
is at least every EVERY_S seconds, in its log."""

from __future__ import annotations

import logging
import re
import time

from midigen.progress import LOG, Progress, progress


def test_lines_come_every_interval_with_counts_fields_and_time_left(caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    with Progress("train xl", 40, "step", every_s=0.2) as shown:
        for step in range(40):
            time.sleep(0.025)
            shown.update(loss=f"{1 / (step + 1):.3f}")
    stamps = [r.created for r in caplog.records]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "train xl: step 0/40 (0%)"
    assert re.fullmatch(r"train xl: 40 step done in 0m0\ds", lines[-1])
    middle = lines[1:-1]
    assert 3 <= len(middle) <= 6  # 1 s of work, a line every 0.2 s
    for line in middle:
        assert re.fullmatch(r"train xl: step \d+/40 \(\d+%\), loss \d\.\d{3}, 0m0\ds left", line)
    assert max(b - a for a, b in zip(stamps, stamps[1:])) < 0.2 + 0.1


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
