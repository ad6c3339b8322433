"""The one exception type whose message is shown to the user as is, and reading that uses it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MidigenError(Exception):
    """A problem with the user's input or environment, explained in one line.

    The CLI prints its message (no traceback) and exits with status 2.
    """


def read_json(path: Path, missing: str) -> Any:
    """A JSON file's content, or one MidigenError: `missing` when the file is absent, the
    parser's complaint when it is not JSON."""
    if not path.exists():
        raise MidigenError(missing)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MidigenError(f"{path}: not valid JSON ({e})") from None
