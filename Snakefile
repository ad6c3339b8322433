# midigen: MIDI -> tokens -> shards -> models -> samples + metrics -> report.
# Run with `snakemake --cores all`; see README.md.
from midigen.params import validate_params


configfile: "params.yaml"


config.update(validate_params(config))  # one message naming a bad key, before any job runs


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "reports/index.html",
    default_target: True
