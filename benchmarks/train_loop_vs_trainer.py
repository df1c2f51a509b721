"""Speed of forgetlab's training loop against a plain Hugging Face `Trainer`, side by side.

Both fine-tune the same freshly initialised default-size Llama on the default world's QA
(answer-masked, right-padded batches from the same collate function), with the same batch size,
optimizer (AdamW), schedule (warmup + cosine), clipping, one CPU thread, and no logging or
checkpointing. The runs alternate A, B, A, B..., and the script prints the median examples/s of
each and their ratio (ours / Trainer; above 1 means forgetlab is faster).

    python benchmarks/train_loop_vs_trainer.py [--steps 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import yaml
from transformers import Trainer, TrainingArguments

from _world import finetune_examples
from forgetlab.losses import lm_loss
from forgetlab.model import new_llama
from forgetlab.qa import collate
from forgetlab.train import Loader, TrainConfig, train


def ours(model, examples, pad_id, cfg: TrainConfig, steps: int) -> float:
    loader = Loader(examples, cfg.batch_size, pad_id, seed=0)
    start = time.perf_counter()
    train(model, lm_loss, iter(loader), steps, cfg, desc="forgetlab loop")
    return steps * cfg.batch_size / (time.perf_counter() - start)


def hf_trainer(model, examples, pad_id, cfg: TrainConfig, steps: int, workdir: str) -> float:
    args = TrainingArguments(
        output_dir=workdir, per_device_train_batch_size=cfg.batch_size, max_steps=steps, learning_rate=cfg.lr,
        lr_scheduler_type="cosine", warmup_steps=int(round(cfg.warmup_ratio * steps)), max_grad_norm=cfg.max_grad_norm,
        weight_decay=cfg.weight_decay, adam_beta2=0.95, save_strategy="no", report_to=[], logging_strategy="no",
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=partial(collate, pad_id=pad_id))
    start = time.perf_counter()
    trainer.train()
    return steps * cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(Path(args.config).read_text())
    cfg = TrainConfig(**config["finetune"])
    with tempfile.TemporaryDirectory() as tmp:
        tok, examples = finetune_examples(config, tmp, cfg.max_length)
        speeds = {"forgetlab": [], "hf_trainer": []}
        for _ in range(args.repeats):
            torch.manual_seed(0)
            speeds["forgetlab"].append(ours(new_llama(config["model"], tok), examples, tok.pad_token_id, cfg, args.steps))
            torch.manual_seed(0)
            speeds["hf_trainer"].append(hf_trainer(new_llama(config["model"], tok), examples, tok.pad_token_id, cfg, args.steps, tmp))
    med = {k: statistics.median(v) for k, v in speeds.items()}
    result = {
        "date": datetime.date.today().isoformat(),
        "steps": args.steps, "batch_size": cfg.batch_size, "threads": 1, "repeats": args.repeats,
        "examples_per_s": {k: round(v, 1) for k, v in med.items()},
        "all_runs": {k: [round(x, 1) for x in v] for k, v in speeds.items()},
        "ratio_forgetlab_over_trainer": round(med["forgetlab"] / med["hf_trainer"], 3),
    }
    out = Path("benchmarks/results/train_loop_vs_trainer.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
