"""The schemes a run may list in `encode.schemes`, made from their params, and the one reader of
the scheme a shard folder was written in.

Each scheme is a branch of the DAG (encode -> shard -> train -> ... per scheme), configured by
the grid keys every scheme shares (encode.steps_per_beat, max_duration, instruments) and its own
section, encode.<scheme>. `bpe` is the index score with merges learned by the shard stage on
the training split; its encode stage writes the index score. events and remi take merges in
their own section the same way (`merges`, 0 = none), so one run can hold index with and
without merges (index and bpe) and any other flat scheme with or without them.
"""

from __future__ import annotations

import json
from pathlib import Path

from midigen.encodings import Scheme
from midigen.encodings.bpe import BPE
from midigen.encodings.codebook import Codebook
from midigen.encodings.events import Events
from midigen.encodings.index import Index
from midigen.encodings.scores import Vocab
from midigen.errors import MidigenError, read_json

SCHEMES = ("index", "bpe", "codebook", "events", "remi")
SCHEME_FILE, MERGES_FILE = "scheme.json", "bpe.json"


def scheme_for(name: str, encode: dict) -> Scheme:
    """The scheme `name` as the `encode` params configure it, before any merges (bpe: the
    index score under them): what the encode stage writes."""
    own = encode.get(name, {})
    if name in ("index", "bpe"):
        return Index(Vocab(encode["max_duration"], encode["instruments"] == "program"))
    if name == "codebook":
        return Codebook(tuple(own["steps"]), tuple(own["durations"]))
    if name == "events":
        return Events(own["max_shift"], own["velocity_bins"], own["sustain"])
    if name == "remi":
        from midigen.encodings.remi import Remi  # MidiTok is needed for this scheme only

        return Remi(encode["steps_per_beat"], encode["max_duration"])
    raise MidigenError(f"unknown scheme {name!r} (one of {', '.join(SCHEMES)})")


def merges_of(name: str, encode: dict) -> int:
    """How many merges the shard stage learns on top of scheme `name` (0: none)."""
    return encode.get(name, {}).get("merges", 0)


def write_scheme(folder: Path, name: str, params: dict, merges: BPE | None = None) -> None:
    """Record in `folder` (a shard being written) the scheme its tokens are in: its name and
    the params it is made from (the grid keys and its own section), and any learned merges."""
    (folder / SCHEME_FILE).write_text(json.dumps({"scheme": name, "encode": params}, indent=1))
    if merges is not None:
        (folder / MERGES_FILE).write_text(merges.to_json())


def scheme_record(folder: Path) -> dict:
    """`folder`'s scheme.json: {"scheme": name, "encode": the params it is made from}."""
    return read_json(Path(folder) / SCHEME_FILE, f"{folder}: no shard here (run shard first)")


def steps_per_beat_of(folder: Path) -> int:
    """The time grid `folder`'s tokens were encoded on (its scheme.json), which the stages
    after it read from there rather than from params."""
    return int(scheme_record(folder)["encode"]["steps_per_beat"])


def load_scheme(shards_dir: Path) -> Scheme:
    """The scheme the shards (or the model) in `shards_dir` were written in, with their
    learned merges."""
    meta = scheme_record(shards_dir)
    scheme = scheme_for(meta["scheme"], meta["encode"])
    if merges_of(meta["scheme"], meta["encode"]):
        merges = (Path(shards_dir) / MERGES_FILE).read_text()
        return BPE.from_json(scheme, merges, meta["scheme"])
    return scheme
