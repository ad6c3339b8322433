# Evaluation phase: generate continuations and score each variant; baselines once per corpus.


rule generate:
    input:
        code_deps("generate"),
        "models/{variant}",
        "data/shards",
        "data/raw",
    output:
        directory("samples/{variant}"),
    params:
        cfg=stage_params("generate"),
    threads: workflow.cores
    log:
        "logs/generate-{variant}.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen generate --variant {wildcards.variant} --shards data/shards --raw data/raw"
        " --model models/{wildcards.variant}/model.pt --out {output}"
        " --params-json {params.cfg:q} --log {log}"


rule baselines:
    input:
        code_deps("baselines"),
        "data/shards",
    output:
        metrics="metrics/baselines.json",
        plots=directory("plots/baselines"),
    params:
        cfg=stage_params("baselines"),
    log:
        "logs/baselines.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen baselines --shards data/shards --out {output.metrics} --plots {output.plots}"
        " --params-json {params.cfg:q} --log {log}"


rule evaluate:
    input:
        code_deps("evaluate"),
        "models/{variant}",
        "data/shards",
        "samples/{variant}",
    output:
        metrics="metrics/eval/{variant}.json",
        plots=directory("plots/eval/{variant}"),
    params:
        cfg=stage_params("evaluate"),
    threads: workflow.cores
    log:
        "logs/evaluate-{variant}.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen evaluate --variant {wildcards.variant} --shards data/shards"
        " --model models/{wildcards.variant}/model.pt --samples samples/{wildcards.variant}"
        " --metrics {output.metrics} --plots {output.plots} --params-json {params.cfg:q}"
        " --log {log}"
