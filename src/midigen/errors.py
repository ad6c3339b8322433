"""The one exception type whose message is shown to the user as is, and reading that uses it:
files, and the optional libraries some features need."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

# Libraries only some features need: module -> (the pyproject extra that installs it, the
# feature). Imported through `optional`, so that a missing one is one message naming the extra.
OPTIONAL = {"miditok": ("remi", "the remi scheme (MidiTok's REMI)")}


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


def missing_extra(module: str) -> str | None:
    """Why the optional `module` cannot be used (the one line to show), or None if installed."""
    extra, feature = OPTIONAL[module]
    if importlib.util.find_spec(module) is not None:
        return None
    return (
        f"{feature} needs the {module} package, which is not installed: "
        f"pip install 'midigen[{extra}]' (in a clone: pip install -e '.[{extra}]')"
    )


def optional(module: str) -> ModuleType:
    """Import an optional library, or raise MidigenError naming the extra that installs it."""
    reason = missing_extra(module)
    if reason is not None:
        raise MidigenError(reason)
    return importlib.import_module(module)
