# Evaluation phase: generate continuations and score each variant; baselines once per corpus.


rule generate:
    input:
        "models/{variant}",
        "data/shards",
        "data/raw",
        "src/midigen/stages/generate.py",
        "src/midigen/generate.py",
        "src/midigen/encoding.py",
        "src/midigen/media.py",
        "src/midigen/model.py",
        "src/midigen/memory.py",
    output:
        directory("samples/{variant}"),
    params:
        cfg=stage_params(generate=None, encode=["steps_per_beat"]),
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
        "data/shards",
        "src/midigen/stages/baselines.py",
        "src/midigen/baselines.py",
        "src/midigen/evaluate.py",
        "src/midigen/paired.py",
        "src/midigen/musical.py",
    output:
        metrics="metrics/baselines.json",
        plots=directory("plots/baselines"),
    params:
        cfg=stage_params(evaluate=None),
    log:
        "logs/baselines.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen baselines --shards data/shards --out {output.metrics} --plots {output.plots}"
        " --params-json {params.cfg:q} --log {log}"


rule evaluate:
    input:
        "models/{variant}",
        "data/shards",
        "samples/{variant}",
        "src/midigen/stages/evaluate.py",
        "src/midigen/evaluate.py",
        "src/midigen/paired.py",
        "src/midigen/musical.py",
        "src/midigen/model.py",
        "src/midigen/memory.py",
        "src/midigen/batching.py",
    output:
        metrics="metrics/eval/{variant}.json",
        plots=directory("plots/eval/{variant}"),
    params:
        cfg=stage_params(
            evaluate=None,
            encode=["steps_per_beat"],
            model=["xl_mem_len"],
            train=["seed", "seeds"],
        ),
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
