"""train.supervised_logits: the LM head only at the supervised positions (forgetlab.losses.forward_supervised).

The full forward and the supervised-only one must give every loss term of lm_loss the same logits,
so the same loss and gradients. The logits rows and the loss are compared to rtol 1e-6 (they come
out bit-equal on the CPU here); the gradient of the (tied) embedding/head weight is a sum over fewer
rows (the full path adds zeros for the prompt and padding rows, in another blocking of the matmul),
so the gradients are compared with allclose: that is why the setting is off by default (the default
study's numbers do not move).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from forgetlab.losses import SupervisedOutputs, forward_supervised, lm_loss, logits_at_supervised
from forgetlab.model import load_model, load_tokenizer
from forgetlab.qa import IGNORE
from forgetlab.regularizers import build_regularizers
from forgetlab.train import TrainConfig, TrainContext
from tests.helpers import REPO, batches


@pytest.fixture(scope="module")
def qa_batch(smoke_data, tiny_model_dir) -> dict:
    """A padded QA batch: prompt positions and padding carry -100, so not every position is supervised."""
    batch = next(batches(smoke_data, load_tokenizer(tiny_model_dir), batch_size=6))
    assert (batch["attention_mask"] == 0).any() and (batch["labels"] == IGNORE).any()
    return batch


def test_the_supervised_logits_are_the_full_forwards_rows(tiny_model_dir, qa_batch):
    model = load_model(tiny_model_dir)
    with torch.no_grad():
        full = model(input_ids=qa_batch["input_ids"], attention_mask=qa_batch["attention_mask"]).logits
        out = forward_supervised(model, qa_batch)
    n = int((qa_batch["labels"][:, 1:] != IGNORE).sum())  # positions whose next label is supervised
    assert out.supervised.shape == (n, full.size(-1)) and n < full.shape[0] * (full.shape[1] - 1)  # fewer rows
    mask = qa_batch["labels"][:, 1:] != IGNORE
    torch.testing.assert_close(out.supervised, full[:, :-1][mask], rtol=1e-6, atol=1e-6)
    assert logits_at_supervised(SimpleNamespace(logits=full), qa_batch["labels"]).equal(full[:, :-1][mask])


def test_reading_full_logits_is_an_error_naming_the_setting():
    with pytest.raises(AttributeError, match="supervised_logits"):
        SupervisedOutputs(torch.zeros(2, 3)).logits


ENTRIES = [
    [{"name": "none"}],
    [{"name": "z_loss", "coef": 1e-2}],
    [{"name": "label_smoothing", "epsilon": 0.1}],
    [{"name": "confidence_penalty", "mode": "entropy", "beta": 0.1}],
    [{"name": "confidence_penalty", "mode": "capped", "tau": "median"}],  # tau: the batch's median p(y)
    [{"name": "multi_sample_dropout", "m": 3, "p": 0.2}],
    [{"name": "nested_dropout", "rate": 0.1}],
    [{"name": "dropout", "attention": 0.0, "residual": 0.1}, {"name": "z_loss"}],
    [{"name": "lora", "rank": 2}],
]


def _loss_and_grads(model_dir, batch, entry, supervised):
    torch.manual_seed(0)  # the same dropout draws in both paths
    model = load_model(model_dir)
    regs = build_regularizers(entry)
    for reg in regs:
        model = reg.setup(model, TrainContext(total_steps=1))
    model.train()
    torch.manual_seed(1)
    loss, parts = lm_loss(model, batch, regs, supervised_logits=supervised)
    loss.backward()
    return loss.detach(), parts, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: "+".join(c["name"] + c.get("mode", "") for c in e))
def test_loss_and_gradients_match_the_full_logits_path(tiny_model_dir, qa_batch, entry):
    if entry[0].get("tau") == "median":  # half the tokens are above the cap: it is active
        with torch.no_grad():
            logits = load_model(tiny_model_dir)(input_ids=qa_batch["input_ids"],
                                                attention_mask=qa_batch["attention_mask"]).logits
        targets = qa_batch["labels"][:, 1:]
        logp = logits[:, :-1][targets != IGNORE].log_softmax(-1).gather(-1, targets[targets != IGNORE][:, None])
        entry = [{**entry[0], "tau": logp.exp().median().item()}]
    full_loss, full_parts, full_grads = _loss_and_grads(tiny_model_dir, qa_batch, entry, supervised=False)
    loss, parts, grads = _loss_and_grads(tiny_model_dir, qa_batch, entry, supervised=True)
    torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=1e-7)
    assert parts.keys() == full_parts.keys()
    assert parts == pytest.approx(full_parts, rel=1e-6, abs=1e-7)
    assert grads.keys() == full_grads.keys() and len(grads) > 0
    for name, g in grads.items():
        torch.testing.assert_close(g, full_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    if entry[0].get("mode") == "capped":  # the cap is active: the loss is not the plain cross-entropy
        assert loss.item() != pytest.approx(full_parts["ce"], rel=1e-3)


def test_the_setting_is_off_by_default():
    assert TrainConfig(epochs=1, batch_size=1, lr=1e-3).supervised_logits is False


@pytest.mark.parametrize("where", ["unlearn", "method"])
def test_supervised_logits_in_an_unlearning_setting_is_refused_naming_the_key(where):
    import yaml

    from forgetlab.config import ConfigError, check_config, validate_schema

    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    if where == "unlearn":
        config["unlearn"]["supervised_logits"] = True
        key = "unlearn.supervised_logits"
    else:
        config["methods"]["npo"]["train"] = {"supervised_logits": True}
        key = "methods.npo.train.supervised_logits"
    validate_schema(config)
    with pytest.raises(ConfigError, match=f"config key {key.replace('.', '[.]')}: the unlearning losses"):
        check_config(config)
