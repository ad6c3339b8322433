# Data phase: download -> encode (one job per scheme and chunk) -> shard (one per scheme).


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
        directory("data/encoded/{scheme}/chunk-{chunk}"),
    params:
        cfg=branch_params("encode"),
    threads: config["encode"]["workers"] or workflow.cores
    log:
        "logs/encode-{scheme}-{chunk}.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen encode --scheme {wildcards.scheme} --chunk {wildcards.chunk} --raw data/raw"
        " --out {output} --workers {threads} --params-json {params.cfg:q} --log {log}"


rule shard:
    input:
        code_deps("shard"),
        expand("data/encoded/{{scheme}}/chunk-{chunk}", chunk=CHUNKS),
    output:
        directory("data/shards/{scheme}"),
    params:
        cfg=branch_params("shard"),
    log:
        "logs/shard-{scheme}.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen shard --scheme {wildcards.scheme} --encoded data/encoded/{wildcards.scheme}"
        " --out {output} --params-json {params.cfg:q} --log {log}"
