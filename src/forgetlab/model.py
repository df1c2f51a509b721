"""Building, loading and saving models: safetensors only, never trust_remote_code, no hub."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from forgetlab import distributed


PRECISIONS = ("auto", "fp32", "bf16")
SWITCHES = ("attn_implementation", "gradient_checkpointing")


def switches(params: dict) -> dict:
    """The model switches a job's params set (forgetlab.config.model_switches): pretrain's are in
    its model section, the other stages' in `model_switches`. Absent: the defaults (sdpa attention,
    transformers' default and what the studies always used; no gradient checkpointing)."""
    section = params["model"] if isinstance(params.get("model"), dict) else params.get("model_switches") or {}
    return {k: section[k] for k in SWITCHES if k in section}


def attention(params: dict) -> dict:
    """`attn_implementation` for load_model / new_llama when the config sets it ({} otherwise)."""
    impl = switches(params).get("attn_implementation")
    return {"attn_implementation": impl} if impl else {}


def checkpointing(model, params: dict):
    """Turn on gradient checkpointing (non-reentrant) when the config's model.gradient_checkpointing is true."""
    if switches(params).get("gradient_checkpointing"):
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cuda_bf16() -> bool:
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch: no emulation argument
        return torch.cuda.is_bf16_supported()


def autocast_dtype(precision: str, dev) -> torch.dtype | None:
    """The autocast dtype of a `precision` setting on a device; None means plain float32.

    auto: bfloat16 on a CUDA device that supports it natively, float32 otherwise (CPU included);
    fp32: float32 everywhere; bf16: bfloat16 autocast on CUDA (an error on a GPU without native
    bfloat16) and on the CPU too (torch's CPU autocast: slower there, and meant for checks).
    Weights, gradients and the optimizer state stay float32 in every case.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    kind = torch.device(dev).type
    if precision == "fp32" or (precision == "auto" and not (kind == "cuda" and _cuda_bf16())):
        return None
    if kind == "cuda" and not _cuda_bf16():
        raise ValueError("precision bf16: this GPU has no native bfloat16 support; use precision fp32 or auto")
    return torch.bfloat16


def autocast(precision: str, dev):
    """A fresh autocast context for the forward pass and loss (a null context for float32)."""
    dtype = autocast_dtype(precision, dev)
    return nullcontext() if dtype is None else torch.autocast(device_type=torch.device(dev).type, dtype=dtype)


def new_llama(model_cfg: dict, tokenizer) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by the config's model section (and its attn_implementation)."""
    heads = model_cfg["num_attention_heads"]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg["hidden_size"],
        intermediate_size=model_cfg["intermediate_size"],
        num_hidden_layers=model_cfg["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=model_cfg.get("max_position_embeddings", 256),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **attention({"model": model_cfg}),
    )
    return LlamaForCausalLM(config)


def check_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model checkpoint directory {path} does not exist")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"model checkpoint {path} has no .safetensors weights; only safetensors are loaded")
    return path


def load_model(path: str | Path, dev: torch.device | None = None, attn_implementation: str | None = None):
    path = check_checkpoint(path)
    impl = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=True, trust_remote_code=False, local_files_only=True, dtype=torch.float32, **impl
    )
    return model.to(dev or device())


def load_tokenizer(path: str | Path):
    tok = AutoTokenizer.from_pretrained(Path(path), trust_remote_code=False, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@contextmanager
def atomic_dir(out: str | Path):
    """Yield a temporary sibling directory; rename it to `out` only if the block succeeds.

    A job that fails therefore leaves no partial output behind.
    """
    if not distributed.is_main():  # a data-parallel worker: rank 0 writes the output
        with distributed.throwaway_dir() as tmp:
            yield tmp
        return
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    remove_stale_temps(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def remove_stale_temps(out: Path) -> None:
    """Remove temporary siblings of `out` left by killed jobs (kill -9, node failure): those whose
    process is gone. Snakemake runs one job per output at a time, so none of them can be live."""
    for old in out.parent.glob(f".{out.name}.tmp-*") if out.parent.is_dir() else ():
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_model(model, tokenizer, out: str | Path) -> None:
    """A plain `save_pretrained` safetensors checkpoint; of a sharded (fsdp) model, its full state
    dict, gathered on rank 0 (every rank calls this: the gathering is a collective)."""
    state = distributed.saved_state(model)  # None for a plain model
    if not distributed.is_main():  # data-parallel workers hold the same weights; rank 0 saves them
        return
    model.save_pretrained(out, safe_serialization=True, **({"state_dict": state} if state is not None else {}))
    tokenizer.save_pretrained(out)
