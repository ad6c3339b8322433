# Training phase: one job per scheme and model variant, each on its scheme's shards.


rule train:
    input:
        code_deps("train"),
        "data/shards/{scheme}",
    output:
        model=directory("models/{scheme}/{variant}"),
        metrics="metrics/{scheme}/train/{variant}/metrics.json",
        plots=directory("metrics/{scheme}/train/{variant}/plots"),
    params:
        cfg=stage_params("train"),
    threads: workflow.cores
    log:
        "logs/train-{scheme}-{variant}.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen train --scheme {wildcards.scheme} --variant {wildcards.variant}"
        " --shards data/shards/{wildcards.scheme} --out {output.model}"
        " --metrics metrics/{wildcards.scheme}/train/{wildcards.variant}"
        " --params-json {params.cfg:q} --log {log}"
