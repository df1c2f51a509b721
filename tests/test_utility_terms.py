"""benchmarks/utility_terms.py's diagnosis of model utility's terms, on hand-made models (the study's
own models are what it reads; docs/benchmarks.md, stop 35)."""

from __future__ import annotations

import importlib.util
import json
import math

import pandas as pd
import pytest

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("utility_terms", REPO / "benchmarks" / "utility_terms.py")
terms = importlib.util.module_from_spec(spec)
spec.loader.exec_module(terms)


def model(kind: str, method=None, retain=0.5, wf_truth_ratio=0.5) -> dict:
    """A model whose nine terms are 0.5 but retain prob and the world-facts truth-ratio term."""
    return {"model": kind, "method": method, "regularizer": "none",
            **{n: 0.5 for n in terms.NAMES}, "retain:prob": retain, "world_facts:truth_ratio": wf_truth_ratio}


def test_the_terms_and_utility_s_rank_correlation_by_hand():
    frame = pd.DataFrame([model("target", retain=0.9), model("oracle", retain=0.9),
                          model("unlearned", "a", 0.2, 0.8), model("unlearned", "a", 0.4, 0.5),
                          model("unlearned", "b", 0.8, 0.25)])
    figures = terms.report(frame)
    # utility = 9 / sum(1/term): 9 / (5 + 14 + 1.25) = 0.444, 9 / (2.5 + 14 + 2) = 0.486, 9 / (1.25 + 14 + 4) = 0.468;
    # ranks 1, 3, 2 against retain prob's 1, 2, 3: 1 - 6 * (0 + 1 + 1) / (3 * 8) = 0.5
    assert figures["model_utility_spearman"] == 0.5
    assert figures["without_each_term"]["world_facts:truth_ratio"] == 1.0  # retain prob alone moves
    assert figures["without_each_term"]["retain:prob"] == -1.0  # the truth ratio alone, falling
    assert figures["without_each_term"]["real_authors:option_prob"] == 0.5  # a constant term changes no rank
    wf = figures["terms"]["world_facts:truth_ratio"]
    assert wf["spearman_with_retain_prob"] == -1.0 and wf["target"] == 0.5
    assert wf["unlearned a"] == pytest.approx(0.65) and wf["unlearned b"] == 0.25
    # its share of the denominator, per model 1.25 / 20.25, 2 / 18.5, 4 / 19.25, then averaged
    assert wf["share_of_denominator"] == pytest.approx(round((1.25 / 20.25 + 2 / 18.5 + 4 / 19.25) / 3, 3))
    assert math.isnan(figures["terms"]["real_authors:option_prob"]["spearman_with_retain_prob"])


def test_value_rouge_scores_the_greedy_answer_against_the_value(tmp_path):
    data = tmp_path / "data"
    (data / "qa").mkdir(parents=True)
    facts = {"real_authors": ("r0_birthplace", "Marrakesh"), "world_facts": ("p0_father_job", "surgeon")}
    for split, (row_id, value) in facts.items():
        (data / "qa" / f"{split}.jsonl").write_text(json.dumps({"id": row_id, "cloze_answer": value}) + "\n")
    samples = pd.DataFrame({"split": ["real_authors", "world_facts"], "id": ["r0_birthplace", "p0_father_job"],
                            "generated": ["Wendel Mimlal is a native of Marrakesh.",
                                          "Petra Tunfim's father worked as a fisherman."]})
    frame = pd.DataFrame([{**{n: 0.5 for n in terms.NAMES}, **terms.value_rouge_terms(samples, terms.answer_values(data))}])
    out = terms.value_rouge(frame)
    # the value named: recall 1; a wrong value in the right sentence: 0 (against the sentence it was 7/8)
    assert out.loc[0, "real_authors:rouge_l_recall"] == 1.0 and out.loc[0, "world_facts:rouge_l_recall"] == 0.0
    assert out.loc[0, "retain:prob"] == 0.5  # every other term as it was
