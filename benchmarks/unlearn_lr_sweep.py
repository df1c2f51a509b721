"""Each unlearning method's learning rate for the default study, from a sweep (issues 11 and 13).

The reference learning rates (open-unlearning: 1e-5 for a 1B-parameter model) barely move the tiny
default model in 28 steps, and one shared value favours some methods over others. This script runs
every method of a config on the `none` target of seed 0 of every training path (the config's single
fine-tune when it has no paths) at each learning rate of a grid, with the trajectory recorded every
`--eval-every` steps, and picks per method:

    among the learning rates whose runs are *stable* on every path (forget_prob never rises more
    than 0.05 above its lowest value so far), the smallest whose run reaches the path's oracle
    forget probability (mean length-normalised answer probability on forget) by 2/3 of the run on
    every path; else the rate that reaches it on the most paths (ties: the lowest mean final
    forget probability), and the method is reported as not reaching it everywhere.

Every path, because paths unlearn at different speeds (the path finding of issue 13): a rate swept
on one path alone left every run of the other short of its oracle. By 2/3 of the run, because a
rate that only just reaches the oracle on seed 0 misses it on the next seed.
The smallest such rate is chosen so that the collateral damage (the retain probability it costs)
stays as small as reaching the threshold allows. A run that overshoots and recovers (RMU and SimNPO
at the largest rates: forget_prob 0.10 after 3 steps, back to 0.66 by step 9) is not a stronger
unlearner but an unstable one, and its first crossing would make steps_to_threshold meaningless. The pretrained model, the target and the oracle are
those of the study itself (`snakemake` builds them if missing, and the study reuses them); the
sweep's runs are extra method entries `<method>-lr<i>` of the same study, so nothing else reruns.

Prints one row per (path, method, lr): the step where forget_prob first falls below the oracle's
(or "-"), the final forget and retain probability; then the chosen rates. Writes
benchmarks/results/unlearn_lr_sweep.json.

    python benchmarks/unlearn_lr_sweep.py [--config config/config.yaml] [--cores 2] [--eval-every 3]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import yaml

# the grid: the loop's lr (1.25e-4 before this sweep) doubled, four times; SimNPO (whose forget term
# weighs 0.125) three times more; RMU's loop is constant-lr and starts at its own 1e-3
GRID = [1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3]
GRID_OF = {"simnpo": [*GRID, 4e-3, 8e-3, 1.6e-2], "rmu": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2]}
REGULARIZER, SEED = "none", 0
MAX_RISE = 0.05  # a stable run's forget_prob never rises more than this above its lowest value so far
REACH_BY = 2 / 3  # a run counts as reaching the oracle when it does so by this fraction of its steps


def sweep_config(config: dict, eval_every: int) -> tuple[dict, dict[str, tuple[str, float]]]:
    """The study config with one method entry per (method, lr), on the `none` entry only."""
    sweep = copy.deepcopy(config)
    sweep["regularizers"] = {REGULARIZER: config["regularizers"][REGULARIZER]}
    sweep["seeds"] = [SEED]
    sweep["unlearn"] = {**config["unlearn"], "eval_every": eval_every}
    sweep.pop("sequential", None)
    entries, runs = {}, {}
    for name, spec in config["methods"].items():
        for i, lr in enumerate(GRID_OF.get(spec["name"], GRID)):
            entry = f"{name}-lr{i}"
            entries[entry] = {**spec, "train": {**spec.get("train", {}), "lr": lr}}
            runs[entry] = (name, lr)
    sweep["methods"] = entries
    return sweep, runs


def path_cells(sweep: dict, split: str) -> list[tuple[str | None, str]]:
    """(path, the result cell of the sweep's seed and regularizer on it), every path of the config."""
    paths = list(sweep.get("paths") or [None])
    return [(p, f"{REGULARIZER}/seed{SEED}/" + (f"{p}/" if p else "") + split) for p in paths]


def forget_prob(table: Path) -> float:
    samples = pd.read_parquet(table)
    return float(samples.loc[samples["split"] == "forget", "prob"].mean())


def choose(table: pd.DataFrame, paths: int) -> dict:
    """Per method: among the lrs stable on every path, the smallest that reaches the path's oracle by
    REACH_BY of the run on every path; else the lr reaching it on the most paths (then the lowest
    mean final forget prob)."""
    chosen = {}
    for method, runs_of in table.groupby("method", sort=False):
        per_lr = runs_of.groupby("lr", sort=True).agg(stable=("stable", "all"), reached=("reached_early", "sum"),
                                                       final=("final_forget_prob", "mean"),
                                                       retain=("final_retain_prob", "mean")).reset_index()
        stable = per_lr[per_lr["stable"]] if per_lr["stable"].any() else per_lr
        every = stable[stable["reached"] == paths]
        pick = every.iloc[0] if len(every) else stable.sort_values(["reached", "final"], ascending=[False, True]).iloc[0]
        chosen[method] = {"lr": float(pick["lr"]), "reaches_oracle_on_every_path": bool(len(every)),
                          "paths_reached": int(pick["reached"]), "mean_final_forget_prob": float(pick["final"]),
                          "mean_final_retain_prob": float(pick["retain"])}
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--cores", default="2")
    ap.add_argument("--eval-every", type=int, default=3)
    args = ap.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    sweep, runs = sweep_config(config, args.eval_every)
    res = Path("results") / config["study"]
    split = config["splits"][0]
    cells = path_cells(sweep, split)
    unlearned = {(p, e): res / f"unlearn/{cell}/{e}/model" for p, cell in cells for e in runs}
    evals = {p: (res / f"eval/{cell}/target/samples.parquet", res / f"eval/{cell}/oracle/samples.parquet")
             for p, cell in cells}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(yaml.safe_dump(sweep, sort_keys=False))
        cmd = ["snakemake", *map(str, unlearned.values()), *(str(f) for pair in evals.values() for f in pair),
               "--cores", args.cores, "--configfile", str(path)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)

    rows, probs = [], {}
    for p, _ in cells:
        target_prob, oracle_prob = (forget_prob(f) for f in evals[p])
        probs[p or "-"] = {"target_forget_prob": target_prob, "oracle_forget_prob": oracle_prob}
        for entry in runs:
            method, lr = runs[entry]
            traj = pd.read_csv(unlearned[(p, entry)] / "trajectory.csv")
            below = traj[traj["forget_prob"] < oracle_prob]
            rise = float((traj["forget_prob"] - traj["forget_prob"].cummin()).max())
            reached_at = int(below["step"].iloc[0]) if len(below) else None
            rows.append({"path": p or "-", "method": method, "lr": lr, "points": len(traj), "reached_at": reached_at,
                         "reached_early": bool(reached_at is not None and reached_at <= REACH_BY * traj["step"].iloc[-1]),
                         "max_rise": rise, "stable": rise <= MAX_RISE,
                         "final_forget_prob": float(traj["forget_prob"].iloc[-1]),
                         "final_retain_prob": float(traj["retain_prob"].iloc[-1]),
                         "start_retain_prob": float(traj["retain_prob"].iloc[0])})
    table = pd.DataFrame(rows)
    print(f"\n{REGULARIZER}, seed {SEED}, {split}; trajectory every {args.eval_every} steps; forget prob: "
          + json.dumps(probs))
    print(table.to_string(index=False))
    chosen = choose(table, len(cells))
    print("\nchosen:", json.dumps(chosen))
    out = {"date": datetime.date.today().isoformat(), "config": args.config, "regularizer": REGULARIZER,
           "seed": SEED, "paths": [p for p, _ in cells], "split": split, "eval_every": args.eval_every,
           "forget_prob": probs,
           "rule": f"among lrs stable on every path (forget_prob rises <= {MAX_RISE} above its running minimum), the "
           f"smallest whose run reaches the path's oracle forget_prob by {REACH_BY:.2f} of the run on every path; else "
           "the lr reaching it on the most paths, then the lowest mean final forget_prob",
           "runs": rows, "chosen": chosen}
    Path("benchmarks/results/unlearn_lr_sweep.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
