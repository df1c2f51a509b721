"""The recipe's extra views of the forget rows: the batches that reach the training loop hold,
row by row, the forget QA, a refusal from idk.txt ("idk") and one of that row's own relabel
answers ("relabel"), all for the same question, for every method that asks for them. Without
relabel answers (real TOFU files) the relabel view borrows other rows' answers to the same kind of
question, and never an answer that evaluation scores for the row."""

from __future__ import annotations

import pytest

from forgetlab.config import stage_params
from forgetlab.model import load_tokenizer
from forgetlab.qa import IGNORE, encode_qa
from forgetlab.recipes import read_jsonl, unlearn
from forgetlab.recipes.unlearn import alternative_answers, refusals, relabel_candidates
from forgetlab.train import TrainConfig
from tests.helpers import smoke_config

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
    pool = rows + read_jsonl(smoke_data / "qa" / "retain90.jsonl")
    draws = {v: alternative_answers(rows, v, params["seed"], pool) for v in ("idk", "relabel")}
    options = {"idk": lambda r: refusals(), "relabel": lambda r: r["relabel_answers"]}
    expected_views = {"idk_nll": {"idk"}, "idk_dpo": {"idk"}, "flat": {"idk"}, "relabel": {"relabel"}}[method]
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


# ----------------------------------------------------------------------------- relabel's answers

def tofu_row(i: int, question: str, answer: str, perturbed: list[str], **extra) -> dict:
    return {"question": question, "answer": answer, "paraphrased_answer": f"paraphrase {i}",
            "perturbed_answer": perturbed, **extra}


def test_relabel_draws_the_rows_own_relabel_answers_never_the_perturbed_ones(smoke_data):
    rows = read_jsonl(smoke_data / "qa" / "forget10.jsonl")
    for seed in range(5):
        drawn = alternative_answers(rows, "relabel", seed)
        assert drawn == alternative_answers(rows, "relabel", seed)  # fixed per seed
        for r, a in zip(rows, drawn):
            assert a in r["relabel_answers"] and a not in r["perturbed_answer"]
    per_row = [{alternative_answers(rows, "relabel", s)[i] for s in range(20)} for i in range(len(rows))]
    assert max(len(x) for x in per_row) > 1  # a seeded draw, not always the first


def test_relabel_fallback_without_the_field_borrows_same_attribute_answers():
    # TOFU-format rows with an attribute key but no relabel_answers
    forget = [
        tofu_row(0, "Where was A born?", "A was born in Lima.", ["A was born in Oslo."], attribute="birthplace",
                 entity_id="a"),
        tofu_row(1, "What does A write?", "A writes poetry.", ["A writes crime."], attribute="genre", entity_id="a"),
    ]
    retain = [
        tofu_row(2, "Where was B born?", "B was born in Oslo.", [], attribute="birthplace", entity_id="b"),
        tofu_row(3, "Where was C born?", "C was born in Cairo.", [], attribute="birthplace", entity_id="c"),
        tofu_row(4, "What does B write?", "B writes crime.", [], attribute="genre", entity_id="b"),
        tofu_row(5, "What does C write?", "A writes crime.", [], attribute="genre", entity_id="c"),
    ]
    pool = forget + retain
    # same attribute, another entity, never the row's own answer, paraphrase or perturbed answers
    # ("A writes crime." is C's answer here, but it is A's perturbed answer, so it is left out)
    assert relabel_candidates(forget[0], pool) == ["B was born in Oslo.", "C was born in Cairo."]
    assert relabel_candidates(forget[1], pool) == ["B writes crime."]
    for seed in range(10):
        drawn = alternative_answers(forget, "relabel", seed, pool)
        assert drawn[0] in ("B was born in Oslo.", "C was born in Cairo.") and drawn[1] == "B writes crime."


def test_relabel_fallback_on_plain_tofu_rows_and_its_errors():
    # no attribute, no entity: any other question's answer, less what evaluation scores for the row
    rows = [tofu_row(0, "Q0?", "x0", ["x1"]), tofu_row(1, "Q1?", "x1", ["x0"]), tofu_row(2, "Q2?", "x2", ["x9"])]
    assert relabel_candidates(rows[0], rows) == ["x2"]  # x1 is row 0's perturbed answer
    assert relabel_candidates(rows[1], rows) == ["x2"]
    assert relabel_candidates(rows[2], rows) == ["x0", "x1"]
    assert alternative_answers(rows[:2], "relabel", 0, rows) == ["x2", "x2"]
    with pytest.raises(ValueError, match="no relabel_answers and no other row"):
        relabel_candidates(rows[0], rows[:2])
    with pytest.raises(ValueError, match="empty relabel_answers"):
        relabel_candidates({**rows[0], "relabel_answers": []}, rows)
    with pytest.raises(ValueError, match="unknown forget view 'perturbed'"):
        alternative_answers(rows, "perturbed", 0)
