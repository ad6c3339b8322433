# One rule per stage of the table in src/midigen/dag.py (command, params, inputs, outputs);
# dvc.yaml is written from the same table by `midigen dag`.
from midigen.dag import expand_inputs, is_folder


for name, stage in STAGES.items():

    rule:
        name:
            name
        input:
            code_deps(name),
            expand_inputs(name, VALUES),
        output:
            [directory(path) if is_folder(path) else path for path in stage.outputs],
        params:
            command=stage_command(name),
        threads: rule_threads(stage)
        log:
            log_path(name),
        conda:
            "../envs/midigen.yaml"
        shell:
            "{params.command} --threads {threads}"
