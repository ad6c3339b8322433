# Report phase: one page comparing every variant; each run is also kept under reports/runs/.


rule report:
    input:
        code_deps("report"),
        expand("metrics/train/{variant}/metrics.json", variant=VARIANTS),
        expand("metrics/eval/{variant}.json", variant=VARIANTS),
        expand("plots/eval/{variant}", variant=VARIANTS),
        expand("samples/{variant}", variant=VARIANTS),
        "metrics/baselines.json",
        "data/shards",
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
