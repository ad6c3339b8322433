# Evaluation phase: generate continuations and score each scheme and variant; baselines once
# per scheme.


rule generate:
    input:
        code_deps("generate"),
        "models/{scheme}/{variant}",
        "data/shards/{scheme}",
        "data/raw",
    output:
        directory("samples/{scheme}/{variant}"),
    params:
        cfg=stage_params("generate"),
    threads: workflow.cores
    log:
        "logs/generate-{scheme}-{variant}.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen generate --scheme {wildcards.scheme} --variant {wildcards.variant}"
        " --shards data/shards/{wildcards.scheme} --raw data/raw"
        " --model models/{wildcards.scheme}/{wildcards.variant}/model.pt --out {output}"
        " --params-json {params.cfg:q} --log {log}"


rule baselines:
    input:
        code_deps("baselines"),
        "data/shards/{scheme}",
    output:
        metrics="metrics/{scheme}/baselines.json",
        plots=directory("plots/{scheme}/baselines"),
    params:
        cfg=stage_params("baselines"),
    log:
        "logs/baselines-{scheme}.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen baselines --scheme {wildcards.scheme} --shards data/shards/{wildcards.scheme}"
        " --out {output.metrics} --plots {output.plots} --params-json {params.cfg:q} --log {log}"


rule evaluate:
    input:
        code_deps("evaluate"),
        "models/{scheme}/{variant}",
        "data/shards/{scheme}",
        "samples/{scheme}/{variant}",
    output:
        metrics="metrics/{scheme}/eval/{variant}.json",
        plots=directory("plots/{scheme}/eval/{variant}"),
    params:
        cfg=stage_params("evaluate"),
    threads: workflow.cores
    log:
        "logs/evaluate-{scheme}-{variant}.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen evaluate --scheme {wildcards.scheme} --variant {wildcards.variant}"
        " --shards data/shards/{wildcards.scheme}"
        " --model models/{wildcards.scheme}/{wildcards.variant}/model.pt"
        " --samples samples/{wildcards.scheme}/{wildcards.variant}"
        " --metrics {output.metrics} --plots {output.plots} --params-json {params.cfg:q}"
        " --log {log}"
