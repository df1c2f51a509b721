"""Speed of forgetlab's training loop against a plain Hugging Face `Trainer`, side by side.

All runs fine-tune the same freshly initialised default-size Llama on the default world's QA
(answer-masked, right-padded batches from the same collate function, each padded to its own longest
example), with the same batch size, optimizer (AdamW), schedule (warmup + cosine), clipping, one CPU
thread, and no logging or checkpointing. Six loops: forgetlab as configured (plain shuffled
batches, per-tensor AdamW), forgetlab with `group_by_length: true`, forgetlab with that and
`fused_adamw: true`, both of these with `supervised_logits: true` (the LM head only at the
supervised positions), and the `Trainer` with its defaults (a plain random sampler, no length
grouping; its default optimizer is torch's fused AdamW). The runs alternate A, B, C, ..., A, B...
in one process.

Each round measures the matmul peak, then runs the six loops back to back. Per run, on the
process's CPU time (time.process_time: on a shared machine it leaves out the time other jobs hold
the cores; the wall time is kept beside it): examples/s; tokens/s (non-padding tokens); the padding
share of the tokens computed (padded batch cells that are padding); and the model FLOPs utilisation

    MFU = (6 * N * tokens/s + attention FLOPs/s) / peak

with N the weights of the model's matmuls (every nn.Linear, the LM head included, the embedding
lookup not), attention 12 * layers * hidden * s^2 per example of s tokens (forward and backward of
QK^T and AV), and the peak the best of five timings of ten fp32 1024 x 1024 x 1024 matmuls on the
same thread at the start of the run's round (a model-shaped 832 x 128 x 512 GEMM is reported
beside it). The script writes the best run (the least disturbed) and the median of each loop, and
each round's ratio of examples/s (forgetlab / Trainer; above 1 means forgetlab is faster) with their
median, min and max.

MFU counts the model's FLOPs (the LM head on every token), also for the `supervised_logits` loops,
which skip part of them.

    python benchmarks/train_loop_vs_trainer.py [--steps 60] [--repeats 3] [--profile [--profile-supervised-logits]]
"""

from __future__ import annotations

import argparse
import dataclasses
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


class Count:
    """Examples, real tokens, padded cells and attention FLOPs of the batches a loop computed."""

    def __init__(self, layers: int, hidden: int):
        self.attention_per_sq = 12 * layers * hidden
        self.examples = self.tokens = self.cells = self.attention = 0

    def __call__(self, batch: dict) -> dict:
        mask = batch["attention_mask"]
        lengths = mask.sum(1)
        self.examples += mask.shape[0]
        self.tokens += int(lengths.sum())
        self.cells += mask.numel()
        self.attention += self.attention_per_sq * int((lengths * lengths).sum())
        return batch


def ours(model, examples, pad_id, cfg: TrainConfig, steps: int, count: Count) -> float:
    loader = Loader(examples, cfg.batch_size, pad_id, seed=0, group_by_length=cfg.group_by_length,
                    megabatch=cfg.length_megabatch)
    loss = partial(lm_loss, supervised_logits=cfg.supervised_logits)
    return timed(lambda: train(model, loss, map(count, iter(loader)), steps, cfg, desc="forgetlab loop"))


def hf_trainer(model, examples, pad_id, cfg: TrainConfig, steps: int, count: Count, workdir: str,
               clock=None, **device_args) -> float:
    """The Trainer's run, on the CPU unless `device_args` say otherwise (the GPU benchmark: bf16)."""
    args = TrainingArguments(
        output_dir=workdir, per_device_train_batch_size=cfg.batch_size, max_steps=steps, learning_rate=cfg.lr,
        lr_scheduler_type="cosine", warmup_steps=int(round(cfg.warmup_ratio * steps)), max_grad_norm=cfg.max_grad_norm,
        weight_decay=cfg.weight_decay, adam_beta2=0.95, save_strategy="no", report_to=[], logging_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True, seed=0, **{"use_cpu": True, **device_args},
    )
    collator = lambda rows: count(collate(rows, pad_id))  # noqa: E731
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator)
    return (clock or timed)(trainer.train)


def timed(run) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of run(): on a shared machine the process's
    CPU time leaves out the time other jobs hold the cores."""
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    return time.process_time() - cpu, time.perf_counter() - wall


def gemm_flops(m: int, k: int, n: int, repeats: int = 5, inner: int = 10) -> float:
    """The best fp32 FLOP/s of repeated (m x k) @ (k x n) matmuls on this thread."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    torch.mm(a, b, out=out)  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        best = max(best, 2 * m * k * n * inner / (time.process_time() - start))
    return best


def matmul_weights(model) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def summarise(runs: list[dict]) -> dict:
    """Per rate: the best run (the least disturbed on a shared machine; = the minimum time) and the median."""
    def stats(key, digits=1):
        values = [r[key] for r in runs]
        return {"best": round(max(values), digits), "median": round(statistics.median(values), digits)}

    return {"cpu_seconds": {"min": min(r["cpu_seconds"] for r in runs), "median": statistics.median(r["cpu_seconds"] for r in runs)},
            "examples_per_s": stats("examples_per_s"), "tokens_per_s": stats("tokens_per_s"), "mfu": stats("mfu", 4),
            "padding_share": runs[0]["padding_share"], "all_runs": runs}


def profile(config, examples, tok, cfg: TrainConfig, steps: int) -> None:
    """Where forgetlab's loop spends its time: the top operators by total CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    model = new_llama(config["model"], tok)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        ours(model, examples, tok.pad_token_id, cfg, steps, Count(1, 1))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print forgetlab's (grouped) loop's profile and stop")
    ap.add_argument("--profile-supervised-logits", action="store_true",
                    help="with --profile: the grouped loop with supervised_logits")
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(Path(args.config).read_text())
    plain = TrainConfig(**config["finetune"])
    grouped = dataclasses.replace(plain, group_by_length=True)
    fused = dataclasses.replace(grouped, fused_adamw=True)
    head = dataclasses.replace(grouped, supervised_logits=True)
    head_fused = dataclasses.replace(fused, supervised_logits=True)
    mc = config["model"]
    with tempfile.TemporaryDirectory() as tmp:
        tok, examples = finetune_examples(config, tmp, plain.max_length)
        if args.profile:
            profile(config, examples, tok, head if args.profile_supervised_logits else grouped, args.steps)
            return
        n_weights = matmul_weights(new_llama(mc, tok))
        loops = {
            "forgetlab": lambda m, c: ours(m, examples, tok.pad_token_id, plain, args.steps, c),
            "forgetlab_group_by_length": lambda m, c: ours(m, examples, tok.pad_token_id, grouped, args.steps, c),
            "forgetlab_group_by_length_fused_adamw": lambda m, c: ours(m, examples, tok.pad_token_id, fused, args.steps, c),
            "forgetlab_group_by_length_supervised_logits":
                lambda m, c: ours(m, examples, tok.pad_token_id, head, args.steps, c),
            "forgetlab_group_by_length_fused_adamw_supervised_logits":
                lambda m, c: ours(m, examples, tok.pad_token_id, head_fused, args.steps, c),
            "hf_trainer": lambda m, c: hf_trainer(m, examples, tok.pad_token_id, plain, args.steps, c, tmp),
        }
        runs, peaks, shaped = {name: [] for name in loops}, [], []
        for _ in range(args.repeats):  # one round: the peak, then each loop, back to back
            peaks.append(gemm_flops(1024, 1024, 1024))
            shaped.append(gemm_flops(plain.batch_size * 26, mc["hidden_size"], mc["intermediate_size"], inner=100))
            for name, loop in loops.items():
                torch.manual_seed(0)
                count = Count(mc["num_hidden_layers"], mc["hidden_size"])
                cpu, wall = loop(new_llama(mc, tok), count)
                flops = 6 * n_weights * count.tokens + count.attention
                runs[name].append({"cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
                                   "examples_per_s": round(count.examples / cpu, 1),
                                   "tokens_per_s": round(count.tokens / cpu, 1),
                                   "padding_share": round(1 - count.tokens / count.cells, 4),
                                   "mfu": round(flops / cpu / peaks[-1], 4)})
    result = {name: summarise(r) for name, r in runs.items()}
    paired = {name: [a["examples_per_s"] / b["examples_per_s"] for a, b in zip(runs[name], runs["hf_trainer"])]
              for name in runs if name != "hf_trainer"}  # each round's ratio: the loops ran back to back
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/train_loop_vs_trainer.py " + f"--steps {args.steps} --repeats {args.repeats}",
        "clock": "CPU time of the process (time.process_time); wall_seconds beside it",
        "steps": args.steps, "batch_size": plain.batch_size, "threads": 1, "repeats": args.repeats,
        "matmul_weights": n_weights,
        "peak_flops": {"used": "best fp32 1024x1024x1024 matmul, 1 thread, measured at the start of each round "
                               "(each run's MFU uses its round's peak)",
                       "gemm_1024": [round(x / 1e9, 2) for x in peaks],
                       "gemm_model_shaped_832x128x512": [round(x / 1e9, 2) for x in shaped], "unit": "GFLOP/s"},
        **result,
        "ratio_over_trainer_examples_per_s": {
            name: {"median": round(statistics.median(r), 3), "min": round(min(r), 3), "max": round(max(r), 3),
                   "rounds": [round(x, 3) for x in r]} for name, r in paired.items()},
    }
    path = Path("benchmarks/results/train_loop_vs_trainer.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in runs}, indent=2))
    for name in runs:
        print(name, {k: result[name][k] for k in ("examples_per_s", "tokens_per_s", "mfu", "padding_share")})


if __name__ == "__main__":
    main()
