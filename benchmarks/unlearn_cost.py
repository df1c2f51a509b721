"""Step time of each unlearning method (and plug-in entry) relative to `grad_ascent`, side by side.

Every method entry of the config (default: config/catalogue.yaml, which lists every registered
method and plug-in) unlearns the same default-size Llama on the same forget and retain batches
for the same number of steps, on one thread, through forgetlab's own loop and hooks
(`forgetlab.train.train`, with the method's setup and finalize and a shared frozen reference
where it needs one). The order is shuffled and repeated; the script prints the median seconds
per step and the ratio to grad_ascent.

    python benchmarks/unlearn_cost.py [--config config/catalogue.yaml] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from _world import finetune_examples
from forgetlab.model import new_llama
from forgetlab.recipes import read_jsonl
from forgetlab.recipes.unlearn import forget_examples
from forgetlab.train import Loader, TrainConfig, TrainContext, paired, train
from forgetlab.unlearning import build_method


def seconds_per_step(spec, model, tok, forget, retain, cfg: TrainConfig, steps: int) -> float:
    torch.manual_seed(0)
    method = build_method(spec)
    model = copy.deepcopy(model)
    if method.needs_reference:
        method.reference = copy.deepcopy(model).eval().requires_grad_(False)
    pad = tok.pad_token_id
    ctx = TrainContext(total_steps=steps, forget=Loader([e["forget"] for e in forget], cfg.batch_size, pad, 2),
                       retain=Loader(retain, cfg.batch_size, pad, 3))
    batches = paired(Loader(forget, cfg.batch_size, pad, 0), Loader(retain, cfg.batch_size, pad, 1))
    start = time.perf_counter()
    train(model, method.loss, batches, steps, cfg, hooks=[method, *method.plugins],
          desc=spec["name"], context=ctx)
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/catalogue.yaml")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(Path(args.config).read_text())
    train_params = {k: v for k, v in config["unlearn"].items() if k != "eval_every"}
    cfg = TrainConfig(**{**train_params, "max_steps": args.steps})
    entries = config["methods"]
    with tempfile.TemporaryDirectory() as tmp:
        tok, _ = finetune_examples(config, tmp, cfg.max_length)
        qa = Path(tmp) / "data" / "qa"
        forget_rows, retain_rows = read_jsonl(qa / "forget10.jsonl"), read_jsonl(qa / "retain90.jsonl")
        views = sorted({v for spec in entries.values() for v in build_method(spec).forget_views})
        forget = forget_examples(tok, forget_rows, views, 0, cfg.max_length)
        retain = [e["forget"] for e in forget_examples(tok, retain_rows, (), 0, cfg.max_length)]
        torch.manual_seed(0)
        model = new_llama(config["model"], tok)
        times = {name: [] for name in entries}
        order = list(entries)
        for r in range(args.repeats):
            random.Random(r).shuffle(order)
            for name in order:
                times[name].append(seconds_per_step(entries[name], model, tok, forget, retain, cfg, args.steps))
    med = {name: statistics.median(v) for name, v in times.items()}
    result = {
        "date": datetime.date.today().isoformat(),
        "config": args.config, "steps": args.steps, "batch_size": cfg.batch_size, "threads": 1,
        "repeats": args.repeats,
        "seconds_per_step": {k: round(v, 4) for k, v in sorted(med.items())},
        "ratio_to_grad_ascent": {k: round(v / med["grad_ascent"], 2) for k, v in sorted(med.items())},
    }
    out = Path("benchmarks/results/unlearn_cost.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
