# Data phase: download -> encode (one job per chunk) -> shard.


rule download:
    input:
        "src/midigen/stages/download.py",
        "src/midigen/download.py",
        "src/midigen/midi.py",
    output:
        directory("data/raw"),
    params:
        cfg=stage_params(download=None),
    log:
        "logs/download.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen download --out {output} --params-json {params.cfg:q} --log {log}"


rule encode:
    input:
        "data/raw",
        "src/midigen/stages/encode.py",
        "src/midigen/corpus.py",
        "src/midigen/encoding.py",
        "src/midigen/midi.py",
    output:
        directory("data/encoded/chunk-{chunk}"),
    params:
        cfg=stage_params(encode=ENCODE_KEYS),
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
        expand("data/encoded/chunk-{chunk}", chunk=CHUNKS),
        "src/midigen/stages/shard.py",
        "src/midigen/corpus.py",
        "src/midigen/encoding.py",
    output:
        directory("data/shards"),
    params:
        cfg=stage_params(encode=[*ENCODE_KEYS, "flag_lost_fraction"]),
    log:
        "logs/shard.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen shard --encoded data/encoded --out {output} --params-json {params.cfg:q} --log {log}"
