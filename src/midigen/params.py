"""Load params.yaml and check it against the schema before any stage touches an output."""

from __future__ import annotations

import difflib
import functools
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from midigen.errors import MidigenError, missing_extra

DEFAULT_PARAMS = Path("params.yaml")


@functools.cache
def schema() -> dict[str, Any]:
    text = resources.files("midigen").joinpath("params.schema.yaml").read_text()
    return yaml.safe_load(text)


def default(section: str, key: str) -> Any:
    """The schema's default of `section.key`: the one place defaults live (the dataclasses
    that hold params take theirs from here, and the committed params.yaml must agree)."""
    rules = schema()["properties"][section]["properties"][key]
    return _with_defaults(rules["default"], rules)


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read and validate a params file; raise MidigenError naming the first bad key."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MidigenError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise MidigenError(f"{path}: not valid YAML ({e})") from None
    return validate_params(params, source=str(path))


def validate_params(params: Any, source: str = "params.yaml", partial: bool = False) -> dict:
    """Validate `params` (a parsed params file) and return a copy with schema defaults filled.

    Raises MidigenError with one clear message. `partial` accepts a subset of the top-level
    sections (what a Snakemake rule passes).
    """
    rules = _without_required(schema()) if partial else schema()
    validator = jsonschema.Draft202012Validator(rules)
    errors = sorted(validator.iter_errors(params), key=lambda e: (len(e.path), list(e.path)))
    if errors:
        raise MidigenError(f"{source}: {_describe(errors[0])}")
    params = _with_defaults(params, rules)
    _check_consistency(params, source)
    return params


def _without_required(rules: Any) -> Any:
    """The schema with nothing required, for a rule that passes only the keys it reads."""
    if isinstance(rules, dict):
        return {k: _without_required(v) for k, v in rules.items() if k != "required"}
    return rules


def _with_defaults(value: Any, rules: dict) -> Any:
    """The schema's `default:` for every key left out, recursively (one source of defaults)."""
    if not isinstance(value, dict):
        return value
    properties = rules.get("properties", {})
    filled = {
        k: _with_defaults(v["default"], v)
        for k, v in properties.items()
        if "default" in v and k not in value
    }
    filled.update({k: _with_defaults(v, properties.get(k, {})) for k, v in value.items()})
    return filled


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    """Turn a jsonschema error into one sentence that names the offending key."""
    where = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        bad = extra[0]
        full = f"{where}.{bad}" if error.absolute_path else bad
        hint = difflib.get_close_matches(bad, allowed, n=1)
        suggestion = (
            f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(allowed)})"
        )
        return f"unknown key '{full}'{suggestion}"
    if error.validator == "required":
        missing = error.message.split("'")[1]
        full = f"{where}.{missing}" if error.absolute_path else missing
        return f"missing required key '{full}'"
    got = f"got {error.instance!r}"
    if error.validator in ("type", "enum", "pattern"):
        expected = error.schema.get("enum") or error.schema.get("type") or error.schema["pattern"]
        return f"'{where}' must be {_expected(error.validator, expected)}, {got}"
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
        return f"'{where}' must be {op[error.validator]} {error.validator_value}, {got}"
    return f"'{where}': {error.message}"


def _expected(kind: str, expected) -> str:
    if kind == "enum":
        return "one of " + ", ".join(repr(v) for v in expected)
    if kind == "pattern":
        return f"a string matching {expected}"
    return " or ".join(expected) if isinstance(expected, list) else f"of type {expected}"


def _check_consistency(params: dict[str, Any], source: str) -> None:
    """Rules that span keys, which the schema cannot express."""
    if "download" in params:
        _check_download(params["download"], source)
    missing = "remi" in params.get("encode", {}).get("schemes", ()) and missing_extra("miditok")
    if missing:
        raise MidigenError(f"{source}: encode.schemes lists remi; {missing}")
    if "chunks" in params.get("encode", {}):
        chunks = params["encode"]["chunks"]
        if sorted(chunks) != list(range(len(chunks))):
            raise MidigenError(
                f"{source}: encode.chunks must list the ids 0..{len(chunks) - 1} "
                f"once each, got {chunks}"
            )


def _check_download(download: dict[str, Any], source: str) -> None:
    src = download["source"]
    if src == "url" and not (download["url"] and download["sha256"]):
        raise MidigenError(
            f"{source}: download.source is 'url' but download.url or "
            "download.sha256 is not set (both are required)"
        )
    if src == "dir" and not download["dir"]:
        raise MidigenError(f"{source}: download.source is 'dir' but download.dir is not set")
    if download["val_fraction"] + download["test_fraction"] >= 1:
        raise MidigenError(f"{source}: download.val_fraction + download.test_fraction must be < 1")
