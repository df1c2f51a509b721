"""forgetlab.recipes.tune_malloc: glibc's malloc kept from mapping and unmapping each training step's
activations. Each case runs in a fresh process (the allocator's settings are per process), on a
tiny Llama's training steps of varying lengths, as a length-grouped fine-tune's are."""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys

import pytest

from tests.helpers import cli_env

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                 reason="tune_malloc sets glibc's malloc")]

STEPS = """
import resource, torch
from transformers import LlamaConfig, LlamaForCausalLM
from forgetlab.recipes import set_threads
torch.manual_seed(0)
set_threads({"threads": 1})
m = LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=128))
opt = torch.optim.AdamW(m.parameters(), 1e-3)
def step(length):
    ids = torch.randint(0, 2048, (32, length))
    m(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
for length in (40, 60, 80):  # warm-up: the optimizer's state and the largest batch
    step(length)
faults = []
for i in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(40 + (i * 7) % 41)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


def page_faults(malloc: str | None) -> list[int]:
    """The minor page faults of each of the 20 measured training steps."""
    env = cli_env(FORGETLAB_MALLOC=malloc or "")  # "" (not "default"): tuned
    proc = subprocess.run([sys.executable, "-c", STEPS], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [int(n) for n in proc.stdout.splitlines()[-1].split()]


def test_a_job_s_training_steps_keep_their_memory_mapped_where_glibc_s_defaults_fault_it_in():
    # set_threads tunes the allocator of every stage's job; FORGETLAB_MALLOC=default opts out. With glibc's
    # defaults a step's larger activations are fresh mmaps, faulted in page by page (a 4 KiB page each: a
    # 32 x 80 x 256 float32 activation alone is 640 pages); tuned, the heap keeps them mapped, so the median
    # step faults in (almost) nothing. The median, not the sum: now and then the kernel faults a few thousand
    # pages of a step in either setting (seen on this project's VM: tuned runs of 20 steps summed 7 to 9,671
    # faults, all of the excess in 1-4 steps).
    tuned = page_faults(None)
    assert statistics.median(tuned) <= 10, tuned
    # the same steps with glibc's defaults: the median step faults in thousands of pages in most runs; in
    # about 1 run in 13 seen here glibc's adaptive mmap threshold kept them mapped too, so up to 3 runs
    medians = []
    while len(medians) < 3 and (not medians or medians[-1] <= 100):
        medians.append(statistics.median(page_faults("default")))
    assert medians[-1] > 100, medians


def test_tune_malloc_says_whether_it_set_the_allocator(monkeypatch):
    from forgetlab.recipes import MALLOC_ENV, tune_malloc

    monkeypatch.setenv(MALLOC_ENV, "default")
    assert tune_malloc() is False
    monkeypatch.delenv(MALLOC_ENV)
    assert tune_malloc() is True
