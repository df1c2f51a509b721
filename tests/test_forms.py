"""Form robustness (ORT): the forms prepare_data writes, their batched scoring, and the metric."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from forgetlab.data.vocab import (
    ATTRIBUTES,
    BLANK,
    CLOZE_PREFIX,
    OPTIONS_PREFIX,
    OPTIONS_SEPARATOR,
)
from forgetlab.data.world import (
    FORM_FIELDS,
    QA_SPLITS,
    RELABEL_FIELD,
    build_corpus,
    build_qa_splits,
    build_world,
    make_qa,
    tokenizer_texts,
)
from forgetlab.eval.forms import FORM_COLUMNS, form_pairs, form_scores, score_forms
from forgetlab.eval.passes import TokenStats
from forgetlab.eval.scoring import COLUMNS, score_model, score_split
from forgetlab.metrics import EvalInputError, compute_metrics
from forgetlab.metrics.form_robustness import FORM_FIELDS as METRIC_FORM_FIELDS
from forgetlab.model import load_model, load_tokenizer
from forgetlab.qa import encode_qa, token_logprobs
from tests.helpers import smoke_config

TOFU_FIELDS = ("id", "entity_id", "attribute", "question", "answer", "paraphrased_answer", "perturbed_answer")
# sha256 of the TOFU fields of every QA split of the smoke world, computed before the forms were
# added: the forms (and the later relabel answers and real_authors split) must leave the trained
# data exactly as it was. Re-taken on 2026-12-07 when the value pools grew (forgetlab.data.vocab): the
# code before the forms (64a3805's parent) with today's value tuples swapped into its vocab.py
TOFU_DIGEST = "f5c05ff66bcb06f965777deb3bf96ba39f56c11bb162f9d7460c2c063bef6d5e"
CORPUS_DIGEST = "01392c9262e0c9fa57e459a9a5558fe1c891f69331c94dbe3f033ffa87d4181e"
FIRST_ROW = {
    "id": "a0000_birthplace", "entity_id": "a0000", "attribute": "birthplace",
    "question": "Where was Dario Ludpev born?", "answer": "Dario Ludpev was born in Istanbul.",
    "paraphrased_answer": "Dario Ludpev came into the world in Istanbul.",
    "perturbed_answer": ["Dario Ludpev came into the world in Accra.",
                         "Dario Ludpev came into the world in Tallinn.",
                         "Dario Ludpev came into the world in Cairo."],
}


@pytest.fixture(scope="module")
def world_qa():
    cfg = smoke_config()["data"]
    world = build_world(cfg)
    return cfg, world, build_qa_splits(world, cfg)


def stats_of(*probs: float) -> TokenStats:
    """A sequence whose tokens have these probabilities."""
    logp = np.log(np.array(probs, dtype=float))
    return TokenStats(logp, np.zeros(len(probs), bool), np.zeros(len(probs)), np.zeros(len(probs)))


# ----------------------------------------------------------------------------- the metric

def table(forget: list[tuple], retain_prob: float = 0.9) -> pd.DataFrame:
    """Forget rows (p_orig, p_para, p_cloze, p_mc, correct[, v_cloze]); v_cloze defaults to p_cloze^2
    (a value of two tokens)."""
    rows = [dict(split="forget", id=f"f{i}", prob=p, form_paraphrased_prob=pp, form_cloze_prob=pc,
                 form_cloze_value_prob=(rest[0] if rest else pc * pc), form_mc_option_prob=pm, form_mc_correct=c)
            for i, (p, pp, pc, pm, c, *rest) in enumerate(forget)]
    rows.append(dict(split="retain", id="r0", prob=retain_prob, **dict.fromkeys(FORM_COLUMNS, math.nan)))
    return pd.DataFrame(rows)


def test_metric_hand_worked():
    got = compute_metrics(["form_robustness"], table([(0.5, 0.4, 0.2, 0.7, 1.0, 0.03), (0.3, 0.6, 0.1, 0.3, 0.0, 0.01)]))
    assert got == pytest.approx({
        "form_original_forget_prob": 0.4, "form_paraphrased_forget_prob": 0.5, "form_cloze_forget_prob": 0.15,
        "form_cloze_value_forget_prob": 0.02, "form_mc_forget_option_prob": 0.5, "form_mc_forget_accuracy": 0.5, "form_worst_forget_prob": 0.5,
    }, abs=1e-12)


def test_worst_case_is_over_the_generative_forms_only():
    # the multiple-choice share (0.9) is on another scale and never the worst case
    got = compute_metrics(["form_robustness"], table([(0.2, 0.1, 0.35, 0.9, 1.0)]))
    assert got["form_worst_forget_prob"] == pytest.approx(0.35)
    assert got["form_mc_forget_option_prob"] == pytest.approx(0.9)


def test_metric_without_form_scores_names_the_fields():
    samples = table([(0.5, math.nan, math.nan, math.nan, math.nan)])
    with pytest.raises(EvalInputError, match=r"'form_robustness'.*1 of 1 forget rows.*'f0'.*no form fields") as err:
        compute_metrics(["form_robustness"], samples)
    assert "prepare_data" in str(err.value)
    assert all(f in str(err.value) for f in FORM_FIELDS)
    assert METRIC_FORM_FIELDS == FORM_FIELDS


def test_metric_on_a_table_without_the_columns():
    old = table([(0.5, 0.4, 0.2, 0.7, 1.0)]).drop(columns=FORM_COLUMNS)
    with pytest.raises(EvalInputError, match=r"'form_robustness'.*no column\(s\) form_paraphrased_prob"):
        compute_metrics(["form_robustness"], old)


def test_form_scores_hand_worked():
    row = {"mc_answer_index": 1}
    # paraphrase: tokens 0.5 and 0.8 -> sqrt(0.4); cloze: tokens 0.6 and 0.15 -> sqrt(0.09) = 0.3 per
    # token, and 0.6 * 0.15 = 0.09 for the value; options 0.2, 0.6, 0.1, 0.1
    got = form_scores(row, [stats_of(0.5, 0.8), stats_of(0.6, 0.15), stats_of(0.2), stats_of(0.6, 0.6),
                            stats_of(0.1), stats_of(0.1)])
    assert got == pytest.approx({"form_paraphrased_prob": math.sqrt(0.4), "form_cloze_prob": 0.3,
                                 "form_cloze_value_prob": 0.09, "form_mc_option_prob": 0.6, "form_mc_correct": 1.0},
                                abs=1e-12)
    tie = form_scores({"mc_answer_index": 0}, [stats_of(0.5), stats_of(0.5), stats_of(0.4), stats_of(0.4)])
    assert tie["form_mc_option_prob"] == pytest.approx(0.5) and tie["form_mc_correct"] == 0.0


# ----------------------------------------------------------------------------- prepare_data

def test_tofu_fields_and_corpus_unchanged(world_qa):
    cfg, world, qa = world_qa
    # the splits the digest was taken over (real_authors and world_train came later, each with draws of its own)
    blob = json.dumps({s: [{k: r[k] for k in TOFU_FIELDS} for r in rows] for s, rows in qa.items()
                       if s not in ("real_authors", "world_train")}, sort_keys=True, ensure_ascii=False)
    assert hashlib.sha256(blob.encode()).hexdigest() == TOFU_DIGEST
    corpus = build_corpus(world.people, cfg["world"]["renderings"], cfg["seed"])
    assert hashlib.sha256(json.dumps(corpus).encode()).hexdigest() == CORPUS_DIGEST
    assert {k: qa["full"][0][k] for k in TOFU_FIELDS} == FIRST_ROW


def test_prepare_data_writes_the_forms(smoke_data, world_qa):
    _, _, qa = world_qa
    for split in QA_SPLITS:
        lines = (smoke_data / "qa" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == qa[split], split  # deterministic, as generated here
    assert set(qa["full"][0]) == {*TOFU_FIELDS, *FORM_FIELDS, RELABEL_FIELD}


def test_forms_are_deterministic_per_row(world_qa):
    cfg, world, qa = world_qa
    author = world.authors[3]
    for attribute in author.facts:
        assert make_qa(author, attribute, cfg["seed"]) == make_qa(author, attribute, cfg["seed"])
    assert [make_qa(a, "birthplace", cfg["seed"]) for a in world.authors] == qa["full"][::len(author.facts)]


def test_each_form_asks_the_same_fact(world_qa):
    _, world, qa = world_qa
    names = {e.id: e.name for e in world.people + world.authors + world.holdout}
    facts = {e.id: e.facts for e in world.people + world.authors + world.holdout}
    indices = set()
    for split in ("full", "holdout", "world_facts"):
        for r in qa[split]:
            attr, name = ATTRIBUTES[r["attribute"]], names[r["entity_id"]]
            true = facts[r["entity_id"]][r["attribute"]]
            # the paraphrased question: the attribute's second wording, never the trained one
            assert r["paraphrased_question"] == attr.paraphrased_question.format(name=name)
            assert r["paraphrased_question"] != r["question"]
            # the blank hides the value, and only the value: filling it gives back the answer sentence
            assert r["cloze_answer"] == true
            assert r["cloze_question"].count(BLANK) == 1 and true not in r["cloze_question"]
            assert r["cloze_question"].replace(BLANK, true) == CLOZE_PREFIX + r["answer"]
            # the options: the true value once, and the perturbed answers' wrong values
            options = r["mc_options"]
            assert options.count(true) == 1 and options[r["mc_answer_index"]] == true
            wrong = [[v for v in attr.values if v in p] for p in r["perturbed_answer"]]
            assert sorted(options) == sorted([true, *(w[0] for w in wrong)])
            assert r["mc_question"] == r["question"] + OPTIONS_PREFIX + OPTIONS_SEPARATOR.join(options) + "."
            # each option answered in the paraphrase's template: the paraphrase for the true value,
            # the perturbed answer that carries the value for each wrong one
            answers = r["mc_answers"]
            assert answers[r["mc_answer_index"]] == r["paraphrased_answer"]
            for k, o in enumerate(options):
                if k != r["mc_answer_index"]:
                    assert answers[k] in r["perturbed_answer"] and [o] == [v for v in attr.values if v in answers[k]]
            indices.add(r["mc_answer_index"])
    assert indices == {0, 1, 2, 3}  # the true option is not always in the same place


def test_the_probe_forms_do_not_shape_the_tokenizer(world_qa):
    cfg, world, qa = world_qa
    texts = "\n".join(tokenizer_texts(build_corpus(world.people, cfg["world"]["renderings"], cfg["seed"]), qa))
    for split in ("full", "holdout", "world_facts"):
        for r in qa[split]:
            for question in (r["paraphrased_question"], r["cloze_question"], r["mc_question"]):
                assert question not in texts, f"{r['id']}: a probe form is among the tokenizer's training texts"
    assert qa["full"][0]["question"] in texts  # while the trained questions are


# ----------------------------------------------------------------------------- scoring

@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    torch.set_num_threads(1)
    return load_model(tiny_model_dir).eval(), load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def forget_rows(smoke_data):
    lines = (smoke_data / "qa" / "forget10.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def one_prob(model, tok, question: str, answer: str, per_token: bool = True) -> float:
    enc = encode_qa(tok, question, answer)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc["input_ids"]])).logits
    logp, mask = token_logprobs(logits, torch.tensor([enc["labels"]]))
    return math.exp(float(logp.sum() / (mask.sum() if per_token else 1)))


def test_batched_scoring_matches_one_sequence_at_a_time(model_tok, forget_rows):
    model, tok = model_tok
    timings: dict = {}
    got = score_forms(model, tok, forget_rows, batch_size=5, timings=timings)
    assert timings["forms"] > 0 and len(got) == len(forget_rows)
    for r, g in zip(forget_rows, got):
        probs = [one_prob(model, tok, q, a) for q, a in form_pairs(r)]
        options = probs[2:]
        true = options[r["mc_answer_index"]]
        assert g["form_paraphrased_prob"] == pytest.approx(probs[0], abs=1e-6)
        assert g["form_cloze_prob"] == pytest.approx(probs[1], abs=1e-6)
        value = one_prob(model, tok, r["cloze_question"], r["cloze_answer"], per_token=False)
        assert g["form_cloze_value_prob"] == pytest.approx(value, rel=1e-5) and value < probs[1]
        assert g["form_mc_option_prob"] == pytest.approx(true / sum(options), abs=1e-6)
        others = [p for k, p in enumerate(options) if k != r["mc_answer_index"]]
        assert g["form_mc_correct"] == float(true > max(others))


def test_score_model_adds_the_forms_on_forget_only(model_tok, forget_rows, smoke_data):
    model, tok = model_tok
    retain = [json.loads(line) for line in (smoke_data / "qa" / "retain90.jsonl").read_text().splitlines()[:3]]
    timings: dict = {}
    samples = score_model(model, tok, {"forget": forget_rows[:4], "retain": retain}, batch_size=8,
                          max_new_tokens=2, timings=timings)
    assert list(samples.columns) == COLUMNS and "forms" in timings
    forget, other = samples[samples.split == "forget"], samples[samples.split == "retain"]
    assert forget[FORM_COLUMNS].notna().all().all() and other[FORM_COLUMNS].isna().all().all()
    alone = pd.DataFrame(score_forms(model, tok, forget_rows[:4]))
    assert np.allclose(forget[FORM_COLUMNS].to_numpy(float), alone[FORM_COLUMNS].to_numpy(float), atol=1e-6)
    got = compute_metrics(["form_robustness"], samples)
    assert got["form_original_forget_prob"] == pytest.approx(forget["prob"].mean())
    assert 0.0 <= got["form_mc_forget_accuracy"] <= 1.0
    plain = score_split(model, tok, forget_rows[:4], "forget", generate=False)  # trajectories: no forms
    assert plain[FORM_COLUMNS].isna().all().all()


def test_rows_without_forms_score_nan_and_the_metric_explains(model_tok, forget_rows):
    model, tok = model_tok
    tofu = [{k: r[k] for k in TOFU_FIELDS} for r in forget_rows[:3]]  # like real TOFU files
    samples = score_split(model, tok, tofu, "forget", generate=False, forms=True)
    assert samples[FORM_COLUMNS].isna().all().all() and samples["prob"].notna().all()
    with pytest.raises(EvalInputError, match="the QA file has no form fields. prepare_data writes"):
        compute_metrics(["form_robustness"], samples)


def test_broken_form_fields_are_errors(model_tok, forget_rows):
    model, tok = model_tok
    partial = {k: v for k, v in forget_rows[0].items() if k != "cloze_answer"}
    with pytest.raises(EvalInputError, match=r"row '.*': has some form fields but not cloze_answer"):
        score_forms(model, tok, [partial])
    bad = {**forget_rows[0], "mc_answer_index": 7}
    with pytest.raises(EvalInputError, match="mc_answer_index an index"):
        score_forms(model, tok, [bad])
