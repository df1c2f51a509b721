"""Each unlearning method's learning rate for the default study, from a sweep (issues 11 and 13).

The reference learning rates (open-unlearning: 1e-5 for a 1B-parameter model) barely move the tiny
default model in 28 steps, and one shared value favours some methods over others. This script runs
every method of a config on the `none` target of seed 0 (of the first training path, when the config
has paths) at each learning rate of a grid, with the
trajectory recorded every `--eval-every` steps, and picks per method:

    among the *stable* runs (forget_prob never rises more than 0.05 above its lowest value so far),
    the smallest learning rate whose run ends below the oracle's forget probability (mean
    length-normalised answer probability on forget); if no stable run ends below it, the stable
    run with the lowest final forget probability (and the method is reported as not reaching it).

The smallest such rate is chosen so that the collateral damage (the retain probability it costs)
stays as small as reaching the threshold allows. A run that overshoots and recovers (RMU and SimNPO
at the largest rates: forget_prob 0.10 after 3 steps, back to 0.66 by step 9) is not a stronger
unlearner but an unstable one, and its first crossing would make steps_to_threshold meaningless. The pretrained model, the target and the oracle are
those of the study itself (`snakemake` builds them if missing, and the study reuses them); the
sweep's runs are extra method entries `<method>-lr<i>` of the same study, so nothing else reruns.

Prints one row per (method, lr): the step where forget_prob first falls below the oracle's (or
"-"), the final forget and retain probability; then the chosen rates. Writes
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


def sweep_config(config: dict, eval_every: int) -> tuple[dict, dict[str, tuple[str, float]]]:
    """The study config with one method entry per (method, lr), on the `none` entry only."""
    sweep = copy.deepcopy(config)
    sweep["regularizers"] = {REGULARIZER: config["regularizers"][REGULARIZER]}
    sweep["seeds"] = [SEED]
    if config.get("paths"):  # the first path only (the reference path of the report)
        first = next(iter(config["paths"]))
        sweep["paths"] = {first: config["paths"][first]}
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
    cell = f"{REGULARIZER}/seed{SEED}/" + (f"{next(iter(sweep['paths']))}/" if sweep.get("paths") else "") + split
    unlearned = [res / f"unlearn/{cell}/{entry}/model" for entry in runs]
    oracle_eval = res / f"eval/{cell}/oracle/samples.parquet"
    target_eval = res / f"eval/{cell}/target/samples.parquet"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(yaml.safe_dump(sweep, sort_keys=False))
        cmd = ["snakemake", *map(str, unlearned), str(target_eval), str(oracle_eval), "--cores", args.cores,
               "--configfile", str(path)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)

    def forget_prob(table: Path) -> float:
        samples = pd.read_parquet(table)
        return float(samples.loc[samples["split"] == "forget", "prob"].mean())

    oracle_prob, target_prob = forget_prob(oracle_eval), forget_prob(target_eval)
    rows = []
    for entry, model in zip(runs, unlearned):
        method, lr = runs[entry]
        traj = pd.read_csv(model / "trajectory.csv")
        below = traj[traj["forget_prob"] < oracle_prob]
        rise = float((traj["forget_prob"] - traj["forget_prob"].cummin()).max())
        rows.append({"method": method, "lr": lr, "points": len(traj),
                     "reached_at": int(below["step"].iloc[0]) if len(below) else None,
                     "max_rise": rise, "stable": rise <= MAX_RISE,
                     "final_forget_prob": float(traj["forget_prob"].iloc[-1]),
                     "final_retain_prob": float(traj["retain_prob"].iloc[-1]),
                     "start_retain_prob": float(traj["retain_prob"].iloc[0])})
    table = pd.DataFrame(rows)
    print(f"\ntarget forget_prob {target_prob:.4f}, oracle forget_prob {oracle_prob:.4f} "
          f"({REGULARIZER}, seed {SEED}, {split}; trajectory every {args.eval_every} steps)")
    print(table.to_string(index=False))
    chosen = {}
    for method, runs_of in table.groupby("method", sort=False):
        stable = runs_of[runs_of["stable"]]
        ends_below = stable[stable["final_forget_prob"] < oracle_prob]
        pick = ends_below.iloc[0] if len(ends_below) else stable.loc[stable["final_forget_prob"].idxmin()]
        chosen[method] = {"lr": float(pick["lr"]), "reaches_oracle": bool(len(ends_below)),
                          "final_forget_prob": float(pick["final_forget_prob"]),
                          "final_retain_prob": float(pick["final_retain_prob"])}
    print("\nchosen:", json.dumps(chosen))
    out = {"date": datetime.date.today().isoformat(), "config": args.config, "regularizer": REGULARIZER,
           "seed": SEED, "path": next(iter(sweep.get("paths") or {None: 0})), "split": split, "eval_every": args.eval_every, "oracle_forget_prob": oracle_prob,
           "target_forget_prob": target_prob, "rule": "among stable runs (forget_prob rises <= 0.05 above its running minimum), the smallest lr "
           "ending below the oracle's forget_prob, else the lowest final forget_prob",
           "runs": rows, "chosen": chosen}
    Path("benchmarks/results/unlearn_lr_sweep.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
