"""Pretraining's two cores: two intra-op threads in one process (the default study's
`threads.pretrain: 2`) against two data-parallel processes of one thread each (gloo DDP, what
`distributed: {nproc_per_node: 2}` would run), on the default model's shape and batch.

Pretraining is the one job of the default study that runs alone (every other job waits for its
model), so its wall time is the study's. Each side takes the same global batch of random tokens
(32 x 150; each worker 16 x 150) through forward, backward and AdamW; the DDP side includes the
gradient all-reduce. Prints ms per step of each and the ratio, and writes
benchmarks/results/pretrain_parallelism.json.

    python benchmarks/pretrain_parallelism.py [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

REPO = Path(__file__).resolve().parents[1]
BATCH, LENGTH, WARMUP = 32, 150, 3


def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    study = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    sizes = {k: v for k, v in study["model"].items() if k != "init_from"}
    config = LlamaConfig(vocab_size=study["data"]["tokenizer"]["vocab_size"], **sizes)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def steps_ms(net, batch: int, steps: int) -> float:
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    vocab = getattr(net, "module", net).config.vocab_size
    x = torch.randint(0, vocab, (batch, LENGTH), generator=torch.Generator().manual_seed(1))
    for i in range(steps + WARMUP):
        if i == WARMUP:
            start = time.perf_counter()
        net(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - start) / steps * 1000


def worker(rank: int, steps: int, port: int, out) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    net = torch.nn.parallel.DistributedDataParallel(model())
    ms = steps_ms(net, BATCH // 2, steps)
    if rank == 0:
        out.put(ms)
    dist.destroy_process_group()


def ddp_ms(steps: int, port: int) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, steps, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    ms = out.get()
    for p in procs:
        p.join()
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    threads, ddp = [], []
    for r in range(args.rounds):  # in turn, so that a slow minute of the machine hits both
        torch.set_num_threads(2)
        threads.append(steps_ms(model(), BATCH, args.steps))
        ddp.append(ddp_ms(args.steps, 29500 + r))
        print(f"round {r}: 2 threads {threads[-1]:.1f} ms/step, 2 DDP processes {ddp[-1]:.1f} ms/step")
    result = {"date": datetime.date.today().isoformat(), "steps": args.steps, "rounds": args.rounds,
              "threads_ms": round(statistics.median(threads), 1), "ddp_ms": round(statistics.median(ddp), 1),
              "ddp_over_threads": round(statistics.median(ddp) / statistics.median(threads), 3),
              "cpus": os.cpu_count()}
    print(json.dumps(result, indent=1))
    path = REPO / "benchmarks" / "results" / "pretrain_parallelism.json"
    path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
