"""Each unlearning method's learning rate for the default study, from a sweep (issues 11 and 13).

The reference learning rates (open-unlearning: 1e-5 for a 1B-parameter model) barely move the tiny
default model in 28 steps, and one shared value favours some methods over others. This script runs
every method of a config on the `none` target of seed 0 of every training path (the config's single
fine-tune when it has no paths) at each learning rate of a grid, with the trajectory recorded every
`--eval-every` steps, and picks per method:

    among the learning rates whose runs are *stable* on every path (forget_prob never rises more
    than 0.05 above its lowest value so far) and reach the path's oracle forget probability (mean
    length-normalised answer probability on forget) by 3/4 of the run on every path, the one whose
    runs keep the most retain probability at the end (mean over paths; ties: the smaller rate); else
    the rate that reaches it on the most paths (ties: the lowest mean final forget probability), and
    the method is reported as not reaching it everywhere.

Every path, because paths unlearn at different speeds (the path finding of issue 13): a rate swept
on one path alone left every run of the other short of its oracle. By 3/4 of the run, because a
rate that only just reaches the oracle on seed 0 misses it on the next seed. The most retain
probability, because collateral damage does not grow with the rate for every method: NPO at 2e-3
ends with more retain probability than at 1e-3 (its forget term fades once the forget answers are
unlikely, and the retain term then repairs). Until 2026-12-07 the rule took the smallest rate
reaching the oracle by 2/3 of the run; on the 3-layer model that was grad_diff at 2e-3 and NPO at
1e-3, and 13 of the study's 30 unlearned models collapsed (retain probability below the oracle's
forget probability; docs/benchmarks.md, stop 38). A run that overshoots and recovers (RMU and SimNPO
at the largest rates: forget_prob 0.10 after 3 steps, back to 0.66 by step 9) is not a stronger
unlearner but an unstable one, and its first crossing would make steps_to_threshold meaningless. The pretrained model, the target and the oracle are
those of the study itself (`snakemake` builds them if missing, and the study reuses them); the
sweep's runs are extra method entries `<method>-lr<i>` of the same study, so nothing else reruns.

Prints one row per (path, method, lr): the step where forget_prob first falls below the oracle's
(or "-"), the final forget and retain probability; then the chosen rates. Writes
benchmarks/results/unlearn_lr_sweep.json. With `--from FILE` it runs nothing: it applies the rule
to the runs recorded in FILE (a sweep's json) and writes the result as the sweep's json.

    python benchmarks/unlearn_lr_sweep.py [--config config/config.yaml] [--cores 2] [--eval-every 3]
    python benchmarks/unlearn_lr_sweep.py --from benchmarks/results/unlearn_lr_sweep.json
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
REACH_BY = 3 / 4  # a run counts as reaching the oracle when it does so by this fraction of its steps


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
    """Per method: among the lrs stable on every path and reaching the path's oracle by REACH_BY of the
    run on every path, the one with the highest mean final retain prob (then the smaller lr); else the
    lr reaching it on the most paths (then the lowest mean final forget prob)."""
    chosen = {}
    for method, runs_of in table.groupby("method", sort=False):
        per_lr = runs_of.groupby("lr", sort=True).agg(stable=("stable", "all"), reached=("reached_early", "sum"),
                                                       final=("final_forget_prob", "mean"),
                                                       retain=("final_retain_prob", "mean")).reset_index()
        stable = per_lr[per_lr["stable"]] if per_lr["stable"].any() else per_lr
        every = stable[stable["reached"] == paths].sort_values(["retain", "lr"], ascending=[False, True])
        pick = every.iloc[0] if len(every) else stable.sort_values(["reached", "final"], ascending=[False, True]).iloc[0]
        chosen[method] = {"lr": float(pick["lr"]), "reaches_oracle_on_every_path": bool(len(every)),
                          "paths_reached": int(pick["reached"]), "mean_final_forget_prob": float(pick["final"]),
                          "mean_final_retain_prob": float(pick["retain"])}
    return chosen


RULE = (f"among lrs stable on every path (forget_prob rises <= {MAX_RISE} above its running minimum) whose runs reach "
        f"the path's oracle forget_prob by {REACH_BY:.2f} of the run on every path, the highest mean final retain_prob "
        "(then the smaller lr); else the lr reaching it on the most paths, then the lowest mean final forget_prob")


def reached_early(reached_at, last_step) -> bool:
    return bool(reached_at is not None and reached_at <= REACH_BY * last_step)


def rechoose(recorded: Path) -> dict:
    """The sweep's json `recorded`, its runs judged again by this rule (`reached_early` from each run's
    `reached_at` and the sweep's `last_step`: every run of a sweep has the same number of steps)."""
    out = json.loads(recorded.read_text())
    if "last_step" not in out:
        raise SystemExit(f"{recorded} has no last_step (the runs' number of optimizer steps)")
    last = out["last_step"]
    for r in out["runs"]:
        r["reached_early"] = reached_early(r["reached_at"], last)
    table = pd.DataFrame(out["runs"])
    print(table.to_string(index=False))
    out["rule"], out["chosen"] = RULE, choose(table, len(out["paths"]))
    out["rechosen"] = datetime.date.today().isoformat()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--cores", default="2")
    ap.add_argument("--eval-every", type=int, default=3)
    ap.add_argument("--from", dest="recorded", type=Path, help="apply the rule to this sweep json's runs; run nothing")
    args = ap.parse_args()
    if args.recorded:
        out = rechoose(args.recorded)
        print("\nchosen:", json.dumps(out["chosen"]))
        Path("benchmarks/results/unlearn_lr_sweep.json").write_text(json.dumps(out, indent=2) + "\n")
        return
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
            last_step = traj["step"].iloc[-1]
            below = traj[traj["forget_prob"] < oracle_prob]
            rise = float((traj["forget_prob"] - traj["forget_prob"].cummin()).max())
            reached_at = int(below["step"].iloc[0]) if len(below) else None
            rows.append({"path": p or "-", "method": method, "lr": lr, "points": len(traj), "reached_at": reached_at,
                         "reached_early": reached_early(reached_at, traj["step"].iloc[-1]),
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
           "forget_prob": probs, "last_step": int(last_step), "rule": RULE, "runs": rows, "chosen": chosen}
    Path("benchmarks/results/unlearn_lr_sweep.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
