# midigen: MIDI -> tokens -> shards.  Run with `snakemake --cores all`; see README.md.
from midigen.params import validate_params


configfile: "params.yaml"


config.update(validate_params(config))  # one message naming a bad key, before any job runs


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"


rule all:
    input:
        "data/shards",
        expand("models/{variant}", variant=config["train"]["variants"]),
    default_target: True
