rule report:
    input:
        all_metric_files(),
    output:
        summary=f"{RES}/summary.parquet",
        csv=report(f"{RES}/summary.csv", caption="../report/summary.rst", category="Summary"),
        plot=report(f"{RES}/forget_quality_vs_utility.png", caption="../report/pareto.rst", category="Figures"),
    params:
        stage=params_json("report"),
        out=RES,
    log:
        f"{LOGS}/report.log",
    shell:
        "forgetlab report {input:q} --out {params.out} --params {params.stage:q} > {log} 2>&1"


# Version the finished study with DVC: `dvc push` sends it to the remote, and in any clone
# `make pull STUDY=<study> CONFIG=<config>` brings it back with nothing left to recompute.
rule track:
    input:
        rules.report.output,
    output:
        data=f"{DATA}.dvc",
        results=f"{RES}.dvc",
    params:
        targets=[DATA, RES],
    log:
        f"results/.{STUDY}.track.log",
    shell:
        "dvc add {params.targets} > {log} 2>&1"
