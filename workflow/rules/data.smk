# Data phase: download -> encode (one job per chunk) -> shard.


rule download:
    input:
        code_deps("download"),
    output:
        directory("data/raw"),
    params:
        cfg=stage_params("download"),
    log:
        "logs/download.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen download --out {output} --params-json {params.cfg:q} --log {log}"


rule encode:
    input:
        code_deps("encode"),
        "data/raw",
    output:
        directory("data/encoded/chunk-{chunk}"),
    params:
        cfg=stage_params("encode"),
    threads: config["encode"]["workers"] or workflow.cores
    log:
        "logs/encode-{chunk}.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen encode --chunk {wildcards.chunk} --raw data/raw --out {output}"
        " --workers {threads} --params-json {params.cfg:q} --log {log}"


rule shard:
    input:
        code_deps("shard"),
        expand("data/encoded/chunk-{chunk}", chunk=CHUNKS),
    output:
        directory("data/shards"),
    params:
        cfg=stage_params("shard"),
    log:
        "logs/shard.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen shard --encoded data/encoded --out {output} --params-json {params.cfg:q} --log {log}"
