"""benchmarks/gpu_throughput.py's CPU-side code paths: its arguments, the ~1B model's size counted
by hand, the TOFU-shaped batches, the MFU arithmetic, the skip without CUDA, and a --dry-run of both
loops on a tiny model (the GPU runs themselves need a GPU: docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from forgetlab.qa import IGNORE
from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("gpu_throughput", REPO / "benchmarks" / "gpu_throughput.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_the_arguments_default_to_the_1b_run_and_a_dry_run_shrinks_it():
    args = bench.parse_args([])
    assert (args.size, args.steps, args.warmup, args.batch_size, args.no_distributed) == ("1b", 40, 5, 16, False)
    dry = bench.parse_args(["--dry-run"])
    assert (dry.size, dry.steps, dry.warmup, dry.batch_size, dry.no_distributed) == ("tiny", 2, 0, 4, True)


def test_the_1b_model_has_the_weights_counted_by_hand():
    hidden, inter, layers, vocab = 2048, 5632, 20, 32000
    per_layer_matmuls = 4 * hidden * hidden + 3 * hidden * inter  # q, k, v, o; gate, up, down
    matmul = layers * per_layer_matmuls + vocab * hidden  # the (tied) head is a matmul too
    total = vocab * hidden + layers * (per_layer_matmuls + 2 * hidden) + hidden  # tied embedding once; the norms
    assert bench.n_weights("1b") == (total, matmul) == (1_093_224_448, 1_093_140_480)


def test_the_batches_have_tofu_s_shape_and_answer_only_labels():
    examples = bench.tofu_examples(vocab=512, n=200, seed=3)
    assert examples == bench.tofu_examples(vocab=512, n=200, seed=3)  # seeded
    (q_lo, q_hi), (a_lo, a_hi) = bench.TOFU_LENGTHS["question"], bench.TOFU_LENGTHS["answer"]
    for e in examples:
        q = sum(1 for x in e["labels"] if x == IGNORE)
        assert q_lo <= q <= q_hi and a_lo <= len(e["input_ids"]) - q <= a_hi
        assert e["labels"][:q] == [IGNORE] * q and e["labels"][q:] == e["input_ids"][q:]
        assert all(3 <= x < 512 for x in e["input_ids"])  # never the pad, bos or eos id


def test_mfu_is_model_flops_over_the_gpus_peak():
    count = bench.Count(layers=2, hidden=8)
    count.tokens, count.examples, count.cells, count.attention = 1000, 10, 1250, 4000
    out = bench.figures(count, seconds=2.0, n_matmul=50, peak=1e5, gpus=2)
    assert out["mfu"] == round((6 * 50 * 1000 + 4000) / 2.0 / (2 * 1e5), 4) == 0.76
    assert (out["tokens_per_s"], out["examples_per_s"], out["padding_share"]) == (500.0, 5.0, 0.2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs the benchmark instead of skipping")
def test_without_cuda_it_says_why_and_exits_0(capsys):
    assert bench.main([]) == 0
    assert "skipped: no CUDA GPU" in capsys.readouterr().out


def test_a_dry_run_times_both_loops_on_a_tiny_model(tmp_path):
    out = tmp_path / "result.json"
    assert bench.main(["--dry-run", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["size"] == "tiny" and result["precision"] == "fp32"
    for loop in ("forgetlab", "hf_trainer"):
        assert result["one_gpu"][loop]["tokens_per_s"] > 0
    assert result["one_gpu"]["ratio_over_trainer_tokens_per_s"] > 0
    assert 60 < result["mean_tokens_per_example"] < 80  # (12+32)/2 + (24+72)/2 = 70 on average
