# Helpers shared by the rule files. What each rule reads (params, code) is declared once, in
# src/midigen/dag.py; dvc.yaml is checked against the same declaration by tests/test_dag.py.
import json

from midigen.dag import code_deps, sections_of


def stage_params(stage):
    """The params `stage` reads (midigen.dag.STAGE_PARAMS), as JSON for `midigen --params-json`.

    Passing them through `params:` makes Snakemake re-run the rule exactly when they change.
    """
    chosen = {
        name: config[name] if keys is None else {k: config[name][k] for k in keys if k in config[name]}
        for name, keys in sections_of(stage).items()
    }
    return json.dumps(chosen, sort_keys=True)


CHUNKS = config["encode"]["chunks"]
VARIANTS = config["train"]["variants"]
