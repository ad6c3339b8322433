# Training phase: one job per model variant, all on the same shards.


rule train:
    input:
        "data/shards",
        "src/midigen/stages/train.py",
        "src/midigen/train.py",
        "src/midigen/batching.py",
        "src/midigen/model.py",
        "src/midigen/memory.py",
    output:
        model=directory("models/{variant}"),
        metrics="metrics/train/{variant}/metrics.json",
        plots=directory("metrics/train/{variant}/plots"),
    params:
        cfg=stage_params(data=None, model=None, train=None, encode=["steps_per_beat"]),
    threads: workflow.cores
    log:
        "logs/train-{variant}.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen train --variant {wildcards.variant} --shards data/shards --out {output.model}"
        " --metrics metrics/train/{wildcards.variant} --params-json {params.cfg:q} --log {log}"
