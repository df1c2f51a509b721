rule report:
    input:
        all_metric_files(),
    output:
        summary=report(f"{RES}/summary.parquet", caption="../report/summary.rst", category="Summary"),
        csv=f"{RES}/summary.csv",
        plot=report(f"{RES}/forget_quality_vs_utility.png", caption="../report/pareto.rst", category="Figures"),
    params:
        stage=params_json("report"),
        out=RES,
    log:
        f"{LOGS}/report.log",
    shell:
        "forgetlab report {input:q} --out {params.out} --params {params.stage:q} > {log} 2>&1"
