"""GPU throughput of forgetlab's training loop: against a plain Hugging Face `Trainer` on one GPU,
and FSDP against DDP over the visible GPUs (torchrun), on a ~1B-parameter Llama in bf16.

The model is built from a LlamaConfig (`SIZES["1b"]`: 2048 hidden, 5632 intermediate, 20 layers,
16 heads of 128, a 32000-token vocabulary, tied embeddings: about 1.1B weights), randomly
initialised: nothing is downloaded. The data are TOFU-shaped: 4000 examples of random token ids
whose question and answer lengths are drawn like TOFU's under a Llama tokenizer (question 12-32
tokens with the prompt, answer 24-72; TOFU_LENGTHS), answer-only labels as forgetlab.qa.encode_qa
makes them, right-padded by forgetlab.qa.collate to each batch's longest.

Both loops fine-tune with the same settings: batch size, AdamW (torch's fused kernel, the
Trainer's default; betas 0.9/0.95), warm-up + cosine, clipping at 1.0, bf16 autocast with float32
weights (forgetlab's `precision: bf16`, the Trainer's `bf16=True`), no logging or checkpointing.
Each loop first runs --warmup steps (CUDA context, cuBLAS and allocator warm-up), then --steps
timed steps on a fresh model, timed on the wall clock between CUDA synchronisations. Figures:
tokens/s (non-padding tokens), examples/s, peak memory (torch.cuda.max_memory_allocated), and

    MFU = (6 * N * tokens/s + attention FLOPs/s) / (GPUs * peak)

with N the weights of the model's matmuls and the attention FLOPs as in
benchmarks/train_loop_vs_trainer.py (its Count), and the peak the best bf16 8192^3 matmul
measured at the start of this run on this GPU (not the datasheet's figure). Targets (issue 17):
MFU >= 0.40 and forgetlab >= 1.2x the Trainer's tokens/s.

With two or more GPUs visible the script relaunches itself through torchrun (--worker ddp, then
--worker fsdp), each over all of them with --batch-size examples per GPU, forgetlab's loop with
`strategy` ddp or fsdp: tokens/s, MFU, and the highest peak memory of any rank.

    python benchmarks/gpu_throughput.py [--steps 40] [--warmup 5] [--batch-size 16] [--size 1b]
    python benchmarks/gpu_throughput.py --dry-run   # the CPU code paths, a tiny model, 2 steps (no GPU)

Without CUDA (and without --dry-run) it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark, also when imported by a test
from train_loop_vs_trainer import Count, hf_trainer, matmul_weights  # noqa: E402

from forgetlab import distributed  # noqa: E402
from forgetlab.losses import lm_loss  # noqa: E402
from forgetlab.qa import IGNORE  # noqa: E402
from forgetlab.strategies import STRATEGIES  # noqa: E402
from forgetlab.train import Loader, TrainConfig, seed_everything, train  # noqa: E402

SIZES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=20, num_attention_heads=16, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=512),
}
TOFU_LENGTHS = {"question": (12, 32), "answer": (24, 72)}  # tokens, uniform within; TOFU's QA under a Llama tokenizer
N_EXAMPLES = 4000  # TOFU's full split
TARGETS = {"mfu": 0.40, "ratio_over_trainer": 1.2}
PAD = 0


def llama_config(size: str) -> LlamaConfig:
    s = SIZES[size]
    return LlamaConfig(**s, num_key_value_heads=s["num_attention_heads"], max_position_embeddings=256,
                       tie_word_embeddings=True, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)


def n_weights(size: str) -> tuple[int, int]:
    """(all weights, matmul weights) of the model, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(size))
    return sum(p.numel() for p in model.parameters()), matmul_weights(model)


def tofu_examples(vocab: int, n: int = N_EXAMPLES, seed: int = 0) -> list[dict]:
    """Random token ids in TOFU's shape: a question (unsupervised) then an answer (supervised)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q, a = (rng.randint(*TOFU_LENGTHS[k]) for k in ("question", "answer"))
        ids = [rng.randrange(3, vocab) for _ in range(q + a)]
        out.append({"input_ids": ids, "labels": [IGNORE] * q + ids[q:]})
    return out


def train_config(batch_size: int, fused: bool) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=batch_size, lr=2e-5, warmup_ratio=0.1, max_grad_norm=1.0,
                       fused_adamw=fused)


def fresh_model(size: str, device: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM(llama_config(size))


def clock(run) -> float:
    """Wall seconds of run(), between CUDA synchronisations (all queued work counted)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - start


def matmul_peak(n: int = 8192, repeats: int = 5, inner: int = 10) -> float:
    """The best bf16 FLOP/s of (n x n) @ (n x n) matmuls on this GPU."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    torch.mm(a, b)  # warm-up
    best = 0.0
    for _ in range(repeats):
        seconds = clock(lambda: [torch.mm(a, b) for _ in range(inner)])
        best = max(best, 2 * n ** 3 * inner / seconds)
    return best


def forgetlab_loop(model, examples, cfg: TrainConfig, steps: int, count: Count, device: str, precision: str,
                   strategy: str = "ddp") -> float:
    loader = Loader(examples, cfg.batch_size, PAD, seed=0, device=device)
    return clock(lambda: train(model, lm_loss, map(count, iter(loader)), steps, cfg, desc="forgetlab loop",
                               precision=precision, strategy=strategy))


def trainer_loop(model, examples, cfg: TrainConfig, steps: int, count: Count, workdir: str, bf16: bool) -> float:
    device_args = {"use_cpu": False, "bf16": True, "optim": "adamw_torch_fused"} if bf16 else {}
    return hf_trainer(model, examples, PAD, cfg, steps, count, workdir, clock=clock, **device_args)


def figures(count: Count, seconds: float, n_matmul: int, peak: float | None, gpus: int = 1) -> dict:
    flops = 6 * n_matmul * count.tokens + count.attention
    out = {"seconds": round(seconds, 3), "tokens_per_s": round(count.tokens / seconds, 1),
           "examples_per_s": round(count.examples / seconds, 2),
           "padding_share": round(1 - count.tokens / max(1, count.cells), 4)}
    if peak:
        out["mfu"] = round(flops / seconds / (gpus * peak), 4)
    if torch.cuda.is_available():
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    return out


def one_gpu(args, examples, n_matmul: int, peak: float | None, device: str, bf16: bool) -> dict:
    """forgetlab's loop and the Trainer, each warmed up, then timed on a fresh model."""
    mc = llama_config(args.size)
    cfg = train_config(args.batch_size, fused=device == "cuda")
    loops = {
        "forgetlab": lambda m, c, s: forgetlab_loop(m, examples, cfg, s, c, device, "bf16" if bf16 else "fp32"),
        "hf_trainer": lambda m, c, s: trainer_loop(m, examples, cfg, s, c, workdir, bf16),
    }
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, loop in loops.items():
            if args.warmup:
                loop(fresh_model(args.size, device), Count(mc.num_hidden_layers, mc.hidden_size), args.warmup)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            count = Count(mc.num_hidden_layers, mc.hidden_size)
            seconds = loop(fresh_model(args.size, device), count, args.steps)
            results[name] = figures(count, seconds, n_matmul, peak)
    results["ratio_over_trainer_tokens_per_s"] = round(
        results["forgetlab"]["tokens_per_s"] / results["hf_trainer"]["tokens_per_s"], 3)
    return results


def worker(args) -> None:
    """One torchrun worker of the DDP or FSDP run (--worker STRATEGY); rank 0 writes --out."""
    torch.distributed.init_process_group("nccl")
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    world = torch.distributed.get_world_size()
    mc = llama_config(args.size)
    examples = tofu_examples(mc.vocab_size)
    cfg = train_config(args.batch_size * world, fused=True)  # --batch-size per GPU: the global batch
    _, n_matmul = n_weights(args.size)
    peak = matmul_peak()
    device = f"cuda:{torch.cuda.current_device()}"
    seed_everything(0)
    forgetlab_loop(fresh_model(args.size, device), examples, cfg, args.warmup, Count(1, 1), device, "bf16", args.worker)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    count = Count(mc.num_hidden_layers, mc.hidden_size)
    seconds = forgetlab_loop(fresh_model(args.size, device), examples, cfg, args.steps, count, device, "bf16",
                             args.worker)
    totals = torch.tensor([count.tokens, count.examples, count.cells, count.attention], dtype=torch.float64,
                          device=device)
    torch.distributed.all_reduce(totals)  # every rank's share of the global batches
    count.tokens, count.examples, count.cells, count.attention = (int(x) for x in totals.tolist())
    mine = figures(count, seconds, n_matmul, peak, gpus=world)
    every = distributed.gather({"peak_memory_gib": mine.pop("peak_memory_gib"), "peak": peak})
    if distributed.is_main():
        mine.update(gpus=world, per_gpu_batch=args.batch_size,
                    peak_memory_gib_max_rank=max(r["peak_memory_gib"] for r in every),
                    matmul_peak_tflops=[round(r["peak"] / 1e12, 1) for r in every])
        Path(args.out).write_text(json.dumps(mine, indent=2) + "\n")
    torch.distributed.destroy_process_group()


def several_gpus(args, gpus: int) -> dict:
    """DDP and FSDP over `gpus` GPUs, each a torchrun launch of this script's worker."""
    results = {}
    for strategy in STRATEGIES:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                   __file__, "--worker", strategy, "--out", str(out), "--size", args.size,
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            results[strategy] = (json.loads(out.read_text()) if proc.returncode == 0
                                 else {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:]})
    if all("tokens_per_s" in results[s] for s in ("ddp", "fsdp")):
        results["fsdp_over_ddp_tokens_per_s"] = round(results["fsdp"]["tokens_per_s"] / results["ddp"]["tokens_per_s"], 3)
    return results


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--steps", type=int, default=40, help="timed optimizer steps per loop")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per loop first, on a throwaway model")
    ap.add_argument("--batch-size", type=int, default=16, help="examples per GPU and step")
    ap.add_argument("--out", help="the result file (default benchmarks/results/gpu_throughput.json; none in a dry run)")
    ap.add_argument("--no-distributed", action="store_true", help="skip the DDP / FSDP runs")
    ap.add_argument("--dry-run", action="store_true",
                    help="on the CPU: the tiny size, fp32, 2 steps, no warm-up, no torchrun; checks the code paths")
    ap.add_argument("--worker", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)  # set by several_gpus
    args = ap.parse_args(argv)
    if args.dry_run:
        args.size, args.steps, args.warmup, args.batch_size, args.no_distributed = "tiny", 2, 0, 4, True
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu_throughput: skipped: no CUDA GPU (torch.cuda.is_available() is False); "
              "--dry-run checks the code paths on the CPU")
        return 0
    gpu = torch.cuda.is_available() and not args.dry_run
    device = "cuda" if gpu else "cpu"
    n_all, n_matmul = n_weights(args.size)
    peak = matmul_peak() if gpu else None
    examples = tofu_examples(llama_config(args.size).vocab_size)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/gpu_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name() if gpu else "cpu (dry run)", "size": args.size,
        "weights": n_all, "matmul_weights": n_matmul, "steps": args.steps, "warmup": args.warmup,
        "batch_size_per_gpu": args.batch_size, "precision": "bf16" if gpu else "fp32",
        "mean_tokens_per_example": round(sum(len(e["input_ids"]) for e in examples) / len(examples), 1),
        "matmul_peak_tflops": round(peak / 1e12, 1) if peak else None, "targets": TARGETS,
        "one_gpu": one_gpu(args, examples, n_matmul, peak, device, bf16=gpu),
    }
    gpus = torch.cuda.device_count() if gpu else 0
    if not args.no_distributed:
        result["distributed"] = several_gpus(args, gpus) if gpus >= 2 else {"skipped": f"{gpus} GPU visible; needs 2 or more"}
    if gpu:
        one = result["one_gpu"]
        result["targets_met"] = {"mfu": one["forgetlab"].get("mfu", 0) >= TARGETS["mfu"],
                                 "ratio_over_trainer": one["ratio_over_trainer_tokens_per_s"] >= TARGETS["ratio_over_trainer"]}
    out = args.out or (None if args.dry_run else "benchmarks/results/gpu_throughput.json")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
