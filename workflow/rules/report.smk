# Report phase: one page comparing every scheme and variant; each run is also kept under
# reports/runs/.


rule report:
    input:
        code_deps("report"),
        expand("metrics/{scheme}/train/{variant}/metrics.json", scheme=SCHEMES, variant=VARIANTS),
        expand("metrics/{scheme}/eval/{variant}.json", scheme=SCHEMES, variant=VARIANTS),
        expand("plots/{scheme}/eval/{variant}", scheme=SCHEMES, variant=VARIANTS),
        expand("samples/{scheme}/{variant}", scheme=SCHEMES, variant=VARIANTS),
        expand("metrics/{scheme}/baselines.json", scheme=SCHEMES),
        expand("data/shards/{scheme}", scheme=SCHEMES),
    output:
        "reports/index.html",
    params:
        cfg=stage_params("report"),
    log:
        "logs/report.log",
    conda:
        "../envs/midigen.yaml"
    shell:
        "midigen report --out reports --params-json {params.cfg:q} --log {log}"
