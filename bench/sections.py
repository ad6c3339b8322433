"""Each benchmark owns one section of bench/RESULTS.md and rewrites only that one.

A section runs from `<!-- bench:NAME -->` to `<!-- /bench:NAME -->`; a benchmark run with
`--results FILE` replaces its own section there (or appends it the first time), so no command
erases another's numbers. The file is replaced by a temp file + rename, never half-written.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path


def commit() -> str:
    """The git commit the benchmark ran on (with '+dirty' for uncommitted changes)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(  # the results file itself does not count: benches write it
            ["git", "status", "--porcelain", "--", "src", "bench", ":!bench/RESULTS.md"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def write_section(path: Path, name: str, markdown: str) -> None:
    """Put `markdown` as section `name` of the file at `path`, leaving every other one."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = f"{text.rstrip()}\n\n{block}\n" if text.strip() else f"{block}\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def record(path: Path, name: str, heading: str, report: str) -> None:
    """Write `report` as section `name`, titled `heading`, the date, the commit and the
    command that ran (this script with its arguments)."""
    command = shlex.join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    title = f"{heading}, {date.today()}, commit {commit()} (`{command}`)"
    write_section(path, name, f"{title}\n\n{report}")
