rule report:
    input:
        metrics=all_metric_files(),
        trajectories=all_trajectory_dirs(),
    output:
        summary=f"{RES}/summary.parquet",
        csv=report(f"{RES}/summary.csv", caption="../report/summary.rst", category="Summary"),
        stats=f"{RES}/stats.parquet",
        stats_csv=report(f"{RES}/stats.csv", caption="../report/stats.rst", category="Seed statistics"),
        tests=f"{RES}/paired_tests.parquet",
        tests_csv=report(f"{RES}/paired_tests.csv", caption="../report/paired_tests.rst", category="Seed statistics"),
        trajectories=f"{RES}/trajectories.csv",
        plot=report(f"{RES}/forget_quality_vs_utility.png", caption="../report/pareto.rst", category="Figures"),
        heatmap=report(f"{RES}/metric_heatmap.png", caption="../report/heatmap.rst", category="Figures"),
        trajectory=report(f"{RES}/trajectory_forget_prob.png", caption="../report/trajectory.rst", category="Trajectories"),
        paths=report(f"{RES}/trajectory_paths.png", caption="../report/trajectory_paths.rst", category="Trajectories"),
        sequential=report(f"{RES}/sequential_unlearning.png", caption="../report/sequential.rst", category="Figures"),
        environment=report(f"{RES}/environment.json", caption="../report/environment.rst", category="Environment"),
        findings=f"{RES}/findings.md",
        findings_html=report(f"{RES}/findings.html", caption="../report/findings.rst", category="Findings"),
        **path_outputs(),
    params:
        **job("report", lambda w: {}),
        trajectories=lambda w, input: " ".join(f"--trajectories {d}" for d in input.trajectories),
        out=lambda w, output: Path(output.summary).parent,
    resources:
        **stage_resources("report"),
    log:
        f"{LOGS}/report.log",
    conda:
        ENV
    shell:
        "forgetlab report --config {STUDY_CONFIG} {input.metrics:q} {params.trajectories} --out {params.out} > {log} 2>&1"


# Version the finished study with DVC: `dvc push` sends it to the remote, and in any clone
# `make pull STUDY=<study> CONFIG=<config>` brings it back with nothing left to recompute.
rule track:
    input:
        rules.report.output,
    output:
        data=f"{DATA}.dvc",
        results=f"{RES}.dvc",
    params:
        targets=lambda w, output: [Path(path).with_suffix("") for path in output],
    resources:
        **stage_resources("track"),
    log:
        f"results/.{STUDY}.track.log",
    conda:
        ENV
    shell:
        "dvc add {params.targets} > {log} 2>&1"
