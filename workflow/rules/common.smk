# Helpers shared by the rule files. Each stage is declared once, in src/midigen/dag.py's table;
# dvc.yaml is written from the same table by `midigen dag`.
import json
from shlex import quote

from midigen.dag import STAGES, code_deps, log_path, sections_of


def stage_params(stage, scheme=None):
    """The params `stage` reads (midigen.dag.STAGE_PARAMS) for one scheme branch, as JSON for
    `midigen --params-json`: part of the rule's command param, so Snakemake re-runs the rule
    exactly when they change."""
    chosen = {
        name: config[name] if keys is None else {k: config[name][k] for k in keys if k in config[name]}
        for name, keys in sections_of(stage, scheme).items()
    }
    return json.dumps(chosen, sort_keys=True)


CHUNKS = config["encode"]["chunks"]
SCHEMES = config["encode"]["schemes"]
VARIANTS = config["train"]["variants"]
VALUES = {"scheme": SCHEMES, "chunk": CHUNKS, "variant": VARIANTS}  # each wildcard's values


def rule_threads(stage):
    """A rule's threads: all cores, the count its param sets (0: all), or one."""
    if stage.threads is None:
        return 1
    if stage.threads == "all":
        return workflow.cores
    section, key = stage.threads.split(".")
    return config[section][key] or workflow.cores


def stage_command(name):
    """A params function: the stage's command line for one job (its paths, the params it reads
    as JSON, its log). As a param it is bound to its stage when the rule is made (Snakemake
    evaluates a rule's `shell:` again when the job runs, when a loop variable would name the
    last stage), and a change to it re-runs the job."""
    stage = STAGES[name]

    def command(wildcards):
        values = dict(wildcards.items())
        cfg = quote(stage_params(name, values.get("scheme")))
        log = log_path(name).format(**values)
        return f"{stage.command.format(**values)} --params-json {cfg} --log {log}"

    return command


wildcard_constraints:
    scheme="|".join(SCHEMES),
    variant="|".join(VARIANTS),
    chunk=r"\d+",
