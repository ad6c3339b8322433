# Helpers shared by the rule files.
import json


def stage_params(**sections):
    """The params a rule reads, as JSON for `midigen --params-json`.

    Passing them through `params:` makes Snakemake re-run the rule exactly when they change.
    `sections` maps a params section to the keys read from it (None = the whole section).
    """
    chosen = {
        name: config[name] if keys is None else {k: config[name][k] for k in keys if k in config[name]}
        for name, keys in sections.items()
    }
    return json.dumps(chosen, sort_keys=True)


# The encode keys that change what a token stream looks like (not `workers`).
ENCODE_KEYS = [
    "steps_per_beat",
    "max_duration",
    "instruments",
    "max_steps",
    "max_notes",
    "max_file_mb",
    "chunks",
]
CHUNKS = config["encode"]["chunks"]
VARIANTS = config["train"]["variants"]
