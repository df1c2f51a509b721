"""The recipe's extra views of the forget rows: the batches that reach the training loop hold,
row by row, the forget QA, a refusal from idk.txt ("idk") and one of that row's own perturbed
answers ("perturbed"), all for the same question, for every method that asks for them."""

from __future__ import annotations

import pytest

from forgetlab.config import stage_params
from forgetlab.model import load_tokenizer
from forgetlab.qa import IGNORE, encode_qa
from forgetlab.recipes import read_jsonl, unlearn
from forgetlab.recipes.unlearn import alternative_answers, refusals
from forgetlab.train import TrainConfig
from tests.conftest import smoke_config

SPECS = {
    "idk_nll": {"name": "idk_nll", "alpha": 1.0},
    "idk_dpo": {"name": "idk_dpo", "beta": 0.1, "alpha": 1.0},
    "relabel": {"name": "relabel"},
    "flat": {"name": "flat", "divergence": "js"},
}
STEPS = 3


def unpadded(view: dict, b: int) -> tuple[list[int], list[int]]:
    keep = view["attention_mask"][b].bool()
    return view["input_ids"][b][keep].tolist(), view["labels"][b][keep].tolist()


def as_key(encoding: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(encoding["input_ids"]), tuple(encoding["labels"])


@pytest.mark.parametrize("method", sorted(SPECS))
def test_views_hold_the_right_answers_row_by_row(method, smoke_data, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = smoke_config()
    config["methods"] = {method: SPECS[method]}
    params = stage_params(config, "unlearn", regularizer="none", seed=0, split="forget10", method=method)
    params["train"] = {**params["train"], "max_steps": STEPS, "eval_every": 0}

    seen, real_train = [], unlearn.train

    def spy(model, loss_fn, batches, *args, **kwargs):
        def recorded():
            for b in batches:
                seen.append(b)
                yield b
        return real_train(model, loss_fn, recorded(), *args, **kwargs)

    monkeypatch.setattr(unlearn, "train", spy)
    unlearn.run(params, tiny_model_dir, smoke_data, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert len(seen) == STEPS

    # what each row's views must be, encoded exactly as the recipe encodes them
    tokenizer = load_tokenizer(tiny_model_dir)
    max_length = params["train"].get("max_length", TrainConfig.max_length)
    rows = read_jsonl(smoke_data / "qa" / "forget10.jsonl")
    row_of = {as_key(encode_qa(tokenizer, r["question"], r["answer"], max_length)): i for i, r in enumerate(rows)}
    assert len(row_of) == len(rows)
    draws = {v: alternative_answers(rows, v, params["seed"]) for v in ("idk", "perturbed")}
    options = {"idk": lambda r: refusals(), "perturbed": lambda r: r["perturbed_answer"]}
    expected_views = {"idk_nll": {"idk"}, "idk_dpo": {"idk"}, "flat": {"idk"}, "relabel": {"perturbed"}}[method]
    uses_retain = method in ("idk_nll", "idk_dpo")

    for batch in seen:
        assert set(batch) == {"forget", "retain", *expected_views}
        assert (batch["retain"] is not None) == uses_retain
        for b in range(batch["forget"]["input_ids"].size(0)):
            ids, labels = unpadded(batch["forget"], b)
            i = row_of[(tuple(ids), tuple(labels))]  # the forget view is one forget row's QA
            prompt = [t for t, l in zip(ids, labels) if l == IGNORE]
            for view in expected_views:
                got = unpadded(batch[view], b)
                # the same question: an identical prompt, answer-only labels after it
                assert got[0][: len(prompt)] == prompt and got[1][: len(prompt)] == [IGNORE] * len(prompt)
                allowed = {as_key(encode_qa(tokenizer, rows[i]["question"], a, max_length)): a for a in options[view](rows[i])}
                key = (tuple(got[0]), tuple(got[1]))
                assert key in allowed, f"row {i}: the {view} view holds none of its allowed answers"
                assert allowed[key] == draws[view][i]  # the row's own seeded draw
                assert got != (ids, labels)


def test_the_refusals_are_the_shipped_file():
    from importlib.resources import files

    shipped = [line.strip() for line in files("forgetlab.unlearning").joinpath("idk.txt").read_text().splitlines()]
    assert refusals() == [line for line in shipped if line] and len(refusals()) > 1
