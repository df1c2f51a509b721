"""Building, loading and saving models: safetensors only, never trust_remote_code, no hub."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def new_llama(model_cfg: dict, tokenizer) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by the config's model section."""
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
    )
    return LlamaForCausalLM(config)


def check_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model checkpoint directory {path} does not exist")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"model checkpoint {path} has no .safetensors weights; only safetensors are loaded")
    return path


def load_model(path: str | Path, dev: torch.device | None = None):
    path = check_checkpoint(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=True, trust_remote_code=False, local_files_only=True, dtype=torch.float32
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
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def save_model(model, tokenizer, out: str | Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
