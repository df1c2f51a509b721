"""The switches for models beyond the toy size: distributed.strategy in the config (what fsdp
refuses, which jobs it runs data-parallel), model.attn_implementation and
model.gradient_checkpointing, and the peak memory a job records (forgetlab.memory), measured from
the job's own start also in a forked child whose parent holds memory."""

from __future__ import annotations

import mmap
import os
import pickle

import numpy as np
import pytest
import torch

from forgetlab import distributed
from forgetlab.config import ConfigError, check_config, stage_params, validate_schema
from forgetlab.losses import lm_loss
from forgetlab.memory import PeakMemory
from forgetlab.model import checkpointing, load_model, new_llama, switches
from forgetlab.qa import collate
from tests.helpers import smoke_config

FSDP = {"nproc_per_node": 2, "strategy": "fsdp"}
UNLEARN = {"model": "unlearned", "regularizer": "none", "seed": 0, "split": "forget10", "method": "npo"}
TARGET = {"model": "target", "role": "target", "regularizer": "none", "seed": 0}


def fsdp_config(**changes) -> dict:
    config = {**smoke_config(), "distributed": FSDP}
    config.update(changes)
    return config


# --- distributed.strategy ---------------------------------------------------------------------

def test_the_smoke_study_s_components_are_all_accepted_under_fsdp():
    config = fsdp_config()
    validate_schema(config)
    check_config(config)  # none, dropout, a z_loss soup; grad_ascent, grad_diff, npo


def test_fsdp_refuses_a_weight_changing_regularizer_naming_the_key_and_why():
    config = fsdp_config()
    config["regularizers"] = {**config["regularizers"], "lora": [{"name": "none"}, {"name": "lora", "rank": 4}]}
    with pytest.raises(ConfigError, match=r"config key regularizers\.lora\[1\]\.name: lora is not supported with "
                                          r"distributed\.strategy fsdp: wraps the model in adapters"):
        check_config(config)
    config["regularizers"] = {**smoke_config()["regularizers"], "soup_swa": {"regularizers": [{"name": "swa"}], "soup": {"k": 2}}}
    with pytest.raises(ConfigError, match=r"regularizers\.soup_swa\.regularizers\[0\]\.name: swa .*running average"):
        check_config(config)


def test_fsdp_refuses_a_method_with_data_dependent_state_and_any_plug_in():
    config = fsdp_config()
    config["methods"] = {**config["methods"], "pdu": {"name": "pdu"}}
    with pytest.raises(ConfigError, match=r"config key methods\.pdu\.name: pdu .*dual variable"):
        check_config(config)
    config["methods"] = {**smoke_config()["methods"], "npo_sal": {"name": "npo", "plugins": ["saliency"]}}
    with pytest.raises(ConfigError, match=r"config key methods\.npo_sal\.plugins\[0\]: saliency .*data-dependent state"):
        check_config(config)


def test_the_same_components_pass_under_ddp():
    config = {**smoke_config(), "distributed": {"nproc_per_node": 2}}
    config["methods"] = {**config["methods"], "pdu": {"name": "pdu"}, "npo_sal": {"name": "npo", "plugins": ["saliency"]}}
    config["regularizers"] = {**config["regularizers"], "swa": [{"name": "swa"}]}
    check_config(config)


def test_a_bad_strategy_is_rejected_naming_the_key():
    with pytest.raises(ConfigError, match="distributed.strategy"):
        validate_schema(fsdp_config(distributed={"nproc_per_node": 2, "strategy": "zero3"}))


def test_unlearn_jobs_run_data_parallel_under_fsdp_only():
    fsdp = stage_params(fsdp_config(), "unlearn", **UNLEARN)
    assert fsdp["distributed"] == FSDP and distributed.nproc(fsdp) == 2
    ddp = stage_params({**smoke_config(), "distributed": {"nproc_per_node": 2}}, "unlearn", **UNLEARN)
    assert "distributed" not in ddp and distributed.nproc(ddp) == 1  # unchanged: unlearn in one process
    finetune = stage_params(fsdp_config(), "finetune", **TARGET)
    assert distributed.nproc(finetune) == 2 and distributed.strategy(finetune) == "fsdp"
    assert distributed.strategy(stage_params(smoke_config(), "finetune", **TARGET)) == "ddp"


def test_one_process_has_no_group_so_fsdp_loads_on_the_default_device():
    assert distributed.load_device({"distributed": FSDP}) is None  # no process group: a plain run


# --- model switches -------------------------------------------------------------------------------

def test_a_config_without_switches_resolves_the_params_it_always_did():
    for stage, coords in (("finetune", TARGET), ("unlearn", UNLEARN)):
        assert "model_switches" not in stage_params(smoke_config(), stage, **coords)


def test_the_switches_reach_every_stage_that_loads_a_model():
    config = smoke_config()
    config["model"] = {**config["model"], "attn_implementation": "eager", "gradient_checkpointing": True}
    validate_schema(config)
    want = {"attn_implementation": "eager", "gradient_checkpointing": True}
    assert switches(stage_params(config, "pretrain")) == want
    for stage, coords in (("finetune", TARGET), ("unlearn", UNLEARN), ("evaluate", {**UNLEARN, "model": "unlearned"})):
        assert switches(stage_params(config, stage, **coords)) == want, stage
    config["model"]["attn_implementation"] = "flash"
    with pytest.raises(ConfigError, match="model.attn_implementation"):
        validate_schema(config)


def test_sdpa_is_the_attention_a_model_gets_by_default_and_the_switch_changes_it(smoke_data, tiny_model_dir):
    from forgetlab.model import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model_cfg = smoke_config()["model"]
    assert new_llama(model_cfg, tokenizer).config._attn_implementation == "sdpa"
    assert new_llama({**model_cfg, "attn_implementation": "eager"}, tokenizer).config._attn_implementation == "eager"
    assert load_model(tiny_model_dir).config._attn_implementation == "sdpa"
    assert load_model(tiny_model_dir, attn_implementation="eager").config._attn_implementation == "eager"


def test_gradient_checkpointing_gives_the_gradients_of_a_plain_backward(tok, model):
    rows = [{"input_ids": tok(t)["input_ids"], "labels": tok(t)["input_ids"]} for t in ("Ada wrote poems.", "Bo paints.")]
    batch = collate(rows, tok.pad_token_id)

    def grads(m):
        m.train()
        m.zero_grad()
        lm_loss(m, batch)[0].backward()
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    def on(m) -> bool:
        return m.is_activation_checkpointing if hasattr(m, "is_activation_checkpointing") else m.is_gradient_checkpointing

    plain = grads(model)
    assert checkpointing(model, {"model": "target"}) is model and not on(model)
    checkpointing(model, {"model_switches": {"gradient_checkpointing": True}})
    assert on(model)
    try:
        recomputed = grads(model)
    finally:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    for n in plain:  # the recomputed forward is the same computation
        torch.testing.assert_close(recomputed[n], plain[n], rtol=1e-6, atol=1e-7, msg=n)


# --- peak memory ----------------------------------------------------------------------------------

MB = 1024 * 1024


def touch(mb: int) -> np.ndarray:
    """`mb` MiB of fresh pages, every one written (resident): an anonymous mapping of its own, not
    malloc's, whose heap may hold freed pages that are still resident (forgetlab.recipes.tune_malloc,
    called by any in-process stage of an earlier test in this worker)."""
    a = np.frombuffer(mmap.mmap(-1, mb * MB), dtype=np.uint8)
    a[:] = 1
    return a


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
def test_a_job_s_peak_counts_what_it_allocates_above_its_start():
    meter = PeakMemory()
    held = touch(200)
    peak = meter.metrics()
    del held
    assert peak["peak_memory_method"] == 1.0
    assert peak["peak_rss_above_start_mb"] >= 200
    assert peak["peak_rss_mb"] >= peak["peak_rss_above_start_mb"] + 1  # the interpreter itself is resident too


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
def test_a_forked_job_s_peak_does_not_count_its_parent_s_memory():
    """As in the fork server: the parent holds 300 MiB, the forked job allocates 100 MiB."""
    parent = touch(300)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report through the pipe, and leave without pytest's teardown
        try:
            meter = PeakMemory()
            start = meter.start_kb / 1024
            own = touch(100)
            result = {"start_mb": start, **meter.metrics()}
            del own
            os.write(write, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        result = pickle.loads(f.read())
    os.waitpid(pid, 0)
    del parent
    assert result["start_mb"] >= 300, "the parent's pages are resident in the child at its start"
    assert 100 <= result["peak_rss_above_start_mb"] < 100 + 150, result  # its own 100 MiB, not the parent's 300


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_a_job_s_cuda_peak_counts_its_allocation():
    torch.zeros(1, device="cuda")  # CUDA initialised, as in a job that has loaded its model
    meter = PeakMemory()
    held = torch.empty(256 * MB, dtype=torch.uint8, device="cuda")
    peak = meter.metrics()["peak_cuda_allocated_mb"]
    del held
    assert peak >= 256
