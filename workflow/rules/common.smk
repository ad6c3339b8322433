# Helpers shared by the rule files. What each rule reads (params, code) is declared once, in
# src/midigen/dag.py; dvc.yaml is checked against the same declaration by tests/test_dag.py.
import json

from midigen.dag import code_deps, sections_of


def stage_params(stage, scheme=None):
    """The params `stage` reads (midigen.dag.STAGE_PARAMS) for one scheme branch, as JSON for
    `midigen --params-json`.

    Passing them through `params:` makes Snakemake re-run the rule exactly when they change.
    """
    chosen = {
        name: config[name] if keys is None else {k: config[name][k] for k in keys if k in config[name]}
        for name, keys in sections_of(stage, scheme).items()
    }
    return json.dumps(chosen, sort_keys=True)


def branch_params(stage):
    """stage_params of the rule's scheme branch (a params function of its wildcards)."""
    return lambda wildcards: stage_params(stage, wildcards.scheme)


CHUNKS = config["encode"]["chunks"]
SCHEMES = config["encode"]["schemes"]
VARIANTS = config["train"]["variants"]


wildcard_constraints:
    scheme="|".join(SCHEMES),
    variant="|".join(VARIANTS),
    chunk=r"\d+",
