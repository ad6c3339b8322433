# Training phase: one job per model variant, all on the same shards.


rule train:
    input:
        code_deps("train"),
        "data/shards",
    output:
        model=directory("models/{variant}"),
        metrics="metrics/train/{variant}/metrics.json",
        plots=directory("metrics/train/{variant}/plots"),
    params:
        cfg=stage_params("train"),
    threads: workflow.cores
    log:
        "logs/train-{variant}.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen train --variant {wildcards.variant} --shards data/shards --out {output.model}"
        " --metrics metrics/train/{wildcards.variant} --params-json {params.cfg:q} --log {log}"
