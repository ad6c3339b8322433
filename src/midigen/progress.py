"""Progress where people look. On a terminal, tqdm's bar; without one (Snakemake and DVC run
every stage so), a line on the log at the first update EVERY_S seconds after the last line,
and whenever a stage has news (a validation loss), which the CLI writes to the stage's --log
file and to the console."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

LOG = logging.getLogger("midigen.progress")  # the CLI shows this logger's INFO on the console
EVERY_S = 25.0  # a line at most 25 s plus one step apart: within 30 s for steps under 5 s
T = TypeVar("T")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    """Counts `total` units of work of `what` (e.g. "train index/xl", 1500 "step").

    `fields` given to `update` (loss, tokens/s, ...) go on the bar and on the lines.
    """

    def __init__(
        self,
        what: str,
        total: int | None,
        unit: str,
        initial: int = 0,
        enabled: bool = True,
        every_s: float = EVERY_S,
    ) -> None:
        terminal = sys.stderr.isatty()
        self.what, self.total, self.unit, self.done, self.every_s = (
            what,
            total,
            unit,
            initial,
            every_s,
        )
        self.lines = enabled and not terminal
        self.bar = tqdm(
            total=total, initial=initial, desc=what, unit=unit, disable=not (enabled and terminal)
        )
        self.fields: dict[str, str] = {}
        self.started = self.last = time.perf_counter()
        self.initial = initial
        self.line()  # a stage that has started says so at once

    def update(self, n: float = 1, **fields: str) -> None:
        self.done += n
        self.fields.update(fields)
        self.bar.update(n)
        if fields:
            self.bar.set_postfix(fields, refresh=False)
        if self.lines and time.perf_counter() - self.last >= self.every_s:
            self.line()

    def line(self) -> None:
        """Log where the work stands now (a no-op on a terminal, where the bar shows it)."""
        if not self.lines:
            return
        self.last = now = time.perf_counter()
        of = f"/{self.total:,} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        text = [f"{self.what}: {self.unit} {self.done:,.0f}{of}"]
        text += [f"{key} {value}" for key, value in self.fields.items()]
        rate = (self.done - self.initial) / max(now - self.started, 1e-9)
        if self.total and rate > 0:
            text.append(f"{_duration((self.total - self.done) / rate)} left")
        LOG.info(", ".join(text))

    def close(self) -> None:
        self.bar.close()
        if self.lines:
            elapsed = time.perf_counter() - self.started
            LOG.info(
                "%s: %s %s done in %s",
                self.what,
                f"{self.done:,.0f}",
                self.unit,
                _duration(elapsed),
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(items: Iterable[T], what: str, total: int | None, unit: str) -> Iterator[T]:
    """`items`, counted by a Progress as they are consumed."""
    with Progress(what, total, unit) as counter:
        for item in items:
            yield item
            counter.update()
