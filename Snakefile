# midigen: MIDI -> tokens -> shards.  Run with `snakemake --cores all`; see README.md.
from midigen.params import validate_params


configfile: "params.yaml"


validate_params(config)  # one message naming the bad key, before any job runs


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


rule all:
    input:
        "data/shards",
    default_target: True
