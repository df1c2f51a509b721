"""Fine-tuning cost of each regularizer relative to `none`, side by side in one run.

Every registered regularizer (default parameters, or the study config's entry when it has one)
fine-tunes the same default-size pretrained-shape Llama on the default world's QA for the same
number of steps, on one thread, through forgetlab's own loop and loss (`forgetlab.train.train`
with `forgetlab.losses.lm_loss`), setup and finalize included. The order is shuffled and repeated;
the script prints the median seconds per step and the ratio to `none` (target: <= 1.3, except
send, whose probes cost by design). A soup (an entry option, forgetlab.soup) costs K fine-tunes.

    python benchmarks/regularizer_cost.py [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import yaml

from _world import finetune_examples
from forgetlab.config import entry_components
from forgetlab.losses import lm_loss
from forgetlab.model import new_llama
from forgetlab.qa import collate
from forgetlab.regularizers import REGULARIZERS, build_regularizers
from forgetlab.train import Loader, TrainConfig, TrainContext, train

BY_DESIGN = {"send": "activation probes every K steps"}


def seconds_per_step(specs, model_cfg, tok, examples, cfg: TrainConfig, steps: int) -> float:
    torch.manual_seed(0)
    model = new_llama(model_cfg, tok)
    regs = build_regularizers(specs)
    probe = collate(examples[: cfg.batch_size], tok.pad_token_id)
    loader = Loader(examples, cfg.batch_size, tok.pad_token_id, seed=0)
    start = time.perf_counter()
    train(model, partial(lm_loss, regularizers=regs), iter(loader), steps, cfg, hooks=regs,
          context=TrainContext(total_steps=steps, probe=probe), desc=specs[0]["name"])
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(Path(args.config).read_text())
    cfg = TrainConfig(**{**config["finetune"], "max_steps": args.steps})
    lists = [entry_components(config, entry) for entry in config["regularizers"]]
    configured = {comps[0]["name"]: comps for comps in lists if len(comps) == 1}
    entries = {name: configured.get(name, [{"name": name}]) for name in REGULARIZERS.names()}
    with tempfile.TemporaryDirectory() as tmp:
        tok, examples = finetune_examples(config, tmp, cfg.max_length)
        times = {name: [] for name in entries}
        order = list(entries)
        for r in range(args.repeats):
            random.Random(r).shuffle(order)
            for name in order:
                times[name].append(seconds_per_step(entries[name], config["model"], tok, examples, cfg, args.steps))
    med = {name: statistics.median(v) for name, v in times.items()}
    ratios = {name: round(med[name] / med["none"], 3) for name in sorted(med)}
    result = {
        "date": datetime.date.today().isoformat(),
        "steps": args.steps, "batch_size": cfg.batch_size, "threads": 1, "repeats": args.repeats,
        "seconds_per_step": {k: round(v, 4) for k, v in sorted(med.items())},
        "ratio_to_none": ratios,
        "by_design": BY_DESIGN,
        "over_1_3": sorted(k for k, v in ratios.items() if v > 1.3 and k not in BY_DESIGN),
    }
    out = Path("benchmarks/results/regularizer_cost.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
