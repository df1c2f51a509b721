"""Shared fixtures: the smoke world generated once, a tiny random Llama saved as safetensors, and a
toy tokenizer and Llama over a two-row QA world. Shared helpers that are not fixtures: tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from forgetlab.data import prepare_data
from forgetlab.model import load_tokenizer, new_llama, save_model
from tests.helpers import SENTENCES, smoke_config, stop_fork_servers


KINDS = ("e2e", "slurm", "gpu")


def pytest_collection_modifyitems(items):
    """A test without an e2e, slurm or gpu marker is a unit test (so a new test is unit by default)."""
    for item in items:
        if not any(item.get_closest_marker(kind) for kind in KINDS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "smoke"
    prepare_data(smoke_config()["data"], out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(smoke_data, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tokenizer = load_tokenizer(smoke_data / "tokenizer")
    model = new_llama(smoke_config()["model"], tokenizer)
    out = tmp_path_factory.mktemp("model") / "pretrained"
    save_model(model, tokenizer, out)
    return out


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> dict:
    """Environment variables that make each `forgetlab` command run as the Snakefile runs it: a client of one
    fork server (forgetlab.forkserver), which has the stages imported, passes the client's SIGTERM to the job
    and kills the job of a SIGKILL'd client. The servers are stopped at the end of the session."""
    servers = tmp_path_factory.mktemp("forkservers")
    yield {"FORGETLAB_FORKSERVER": "1", "FORGETLAB_FORKSERVER_DIR": str(servers)}
    stop_fork_servers(servers)


@pytest.fixture(scope="module")
def tok():
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval()
