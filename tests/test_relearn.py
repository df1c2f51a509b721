"""The relearning attack (forgetlab.eval.relearn) and its metric relearn_recovery: hand-worked tables,
the forget split's division, the input errors, and `forgetlab evaluate` end to end on tiny models."""

from __future__ import annotations

import json
import math
import subprocess
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from forgetlab.config import stage_params
from forgetlab.eval.plan import metrics_to_run
from forgetlab.eval.relearn import RelearnConfig, split_forget
from forgetlab.losses import lm_loss
from forgetlab.metrics import EvalInputError, compute_metrics
from forgetlab.model import load_model, load_tokenizer, save_model
from forgetlab.qa import encode_qa
from forgetlab.recipes import evaluate as recipe
from forgetlab.recipes import read_jsonl
from forgetlab.train import Loader, TrainConfig, train
from tests.helpers import cli_env, smoke_config

pytestmark = pytest.mark.e2e

NAN = math.nan
KEYS = {"relearn_recovery", "relearn_recovery_rouge", "relearn_forget_prob", "relearn_forget_rouge"}


def table(relearn_prob, relearn_rouge, prob=0.5, rouge=0.5, **extra) -> pd.DataFrame:
    """Four forget rows (row "f0" is the relearn subset) and one retain row (no relearn values)."""
    rows = pd.DataFrame({
        "split": ["forget"] * 4 + ["retain"],
        "id": ["f0", "f1", "f2", "f3", "r0"],
        "relearn_subset": [True, False, False, False, False],
        "relearn_prob": [NAN, *relearn_prob, NAN],
        "relearn_rouge_l_recall": [NAN, *relearn_rouge, NAN],
        "prob": [0.99, prob, prob, prob, 0.99],
        "rouge_l_recall": [0.99, rouge, rouge, rouge, 0.99],
    })
    for column, values in extra.items():
        rows[column] = [0.0, *values, 0.99]  # the subset row's value would change every mean
    return rows


# The held-out rows f1..f3. Before relearning: oracle prob 0.1 and ROUGE 0.2, target 0.9 and 0.6
# (gaps 0.8 and 0.4). After relearning: the oracle 0.2 and 0.3 (its generic gain), the target
# 1.0 and 0.7, a half-way model 0.6 (mean of 0.5, 0.6, 0.7) and 0.4.
ORACLE = table([0.2, 0.2, 0.2], [0.3, 0.3, 0.3], prob=0.1, rouge=0.2)
TARGET_COLS = {"target_prob": [0.9, 0.9, 0.9], "target_rouge_l_recall": [0.6, 0.6, 0.6]}


def test_hand_worked_recovery():
    target = table([1.0, 1.0, 1.0], [0.7, 0.7, 0.7], prob=0.9, rouge=0.6, **TARGET_COLS)
    halfway = table([0.5, 0.6, 0.7], [0.4, 0.4, 0.4], prob=0.3, rouge=0.3, **TARGET_COLS)
    got = compute_metrics(["relearn_recovery"], target, ORACLE)
    assert got == pytest.approx({"relearn_recovery": 1.0, "relearn_recovery_rouge": 1.0,
                                 "relearn_forget_prob": 1.0, "relearn_forget_rouge": 0.7})
    got = compute_metrics(["relearn_recovery"], halfway, ORACLE)
    # (0.6 - 0.2) / (0.9 - 0.1) = 0.5; (0.4 - 0.3) / (0.6 - 0.2) = 0.25
    assert got == pytest.approx({"relearn_recovery": 0.5, "relearn_recovery_rouge": 0.25,
                                 "relearn_forget_prob": 0.6, "relearn_forget_rouge": 0.4})


def test_the_oracle_is_zero_by_definition():
    got = compute_metrics(["relearn_recovery"], ORACLE, role="oracle")
    assert got == pytest.approx({"relearn_recovery": 0.0, "relearn_recovery_rouge": 0.0,
                                 "relearn_forget_prob": 0.2, "relearn_forget_rouge": 0.3})
    # the same numbers through the general formula: an oracle-like model against the oracle
    assert compute_metrics(["relearn_recovery"], ORACLE.assign(**{k: [0.0, *v, 0.99] for k, v in TARGET_COLS.items()}),
                           ORACLE)["relearn_recovery"] == 0.0


def test_a_zero_gap_is_an_error_not_a_nan():
    same = table([0.5, 0.5, 0.5], [0.4, 0.4, 0.4], target_prob=[0.1, 0.1, 0.1], target_rouge_l_recall=[0.6, 0.6, 0.6])
    with pytest.raises(EvalInputError, match=r"relearn_recovery is undefined.*mean prob.*differ by 0"):
        compute_metrics(["relearn_recovery"], same, ORACLE)
    rouge_only = same.assign(target_prob=[0.0, 0.9, 0.9, 0.9, 0.99], target_rouge_l_recall=[0.0, 0.2, 0.2, 0.2, 0.99])
    with pytest.raises(EvalInputError, match="relearn_recovery_rouge is undefined"):
        compute_metrics(["relearn_recovery"], rouge_only, ORACLE)


def test_input_errors_name_what_is_missing():
    model = table([0.5, 0.6, 0.7], [0.4, 0.4, 0.4])  # no target columns
    with pytest.raises(EvalInputError, match="needs the target's per-sample table, its target_prob and target_rouge_l_recall"):
        compute_metrics(["relearn_recovery"], model, ORACLE)
    with pytest.raises(EvalInputError, match="needs the oracle's per-sample table"):
        compute_metrics(["relearn_recovery"], model, None)
    other_subset = table([0.5, 0.6, 0.7], [0.4, 0.4, 0.4], **TARGET_COLS)
    other_subset["relearn_subset"] = [False, True, False, False, False]
    other_subset.loc[0, "relearn_prob"], other_subset.loc[1, "relearn_prob"] = 0.5, NAN
    other_subset.loc[0, "relearn_rouge_l_recall"], other_subset.loc[1, "relearn_rouge_l_recall"] = 0.5, NAN
    with pytest.raises(EvalInputError, match="held-out forget rows differ"):
        compute_metrics(["relearn_recovery"], other_subset, ORACLE)
    unscored = table([0.5, NAN, 0.7], [0.4, 0.4, 0.4], **TARGET_COLS)
    with pytest.raises(EvalInputError, match="relearn_prob is missing on 1 held-out"):
        compute_metrics(["relearn_recovery"], unscored, ORACLE)


def test_split_is_deterministic_disjoint_and_covering():
    rows = [{"id": f"q{i}"} for i in range(18)]
    subset, rest = split_forget(rows, 0.25, seed=0)
    again, rest_again = split_forget(rows, 0.25, seed=0)
    assert subset == again and rest == rest_again
    ids = [r["id"] for r in subset], [r["id"] for r in rest]
    assert len(ids[0]) == round(0.25 * 18) and not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(r["id"] for r in rows)
    assert [r["id"] for r in split_forget(rows, 0.25, seed=1)[0]] != ids[0]  # the seed matters
    # at least 1 row on each side
    assert [len(x) for x in split_forget(rows[:2], 0.01, seed=0)] == [1, 1]
    assert [len(x) for x in split_forget(rows[:2], 0.99, seed=0)] == [1, 1]
    with pytest.raises(EvalInputError, match="at least 2 forget rows"):
        split_forget(rows[:1], 0.25, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        RelearnConfig(fraction=1.0)


def test_missing_target_table_names_the_file(tmp_path, smoke_data, tiny_model_dir):
    params = recipe_params("unlearned", method="grad_ascent")
    oracle = tmp_path / "oracle-eval"
    oracle.mkdir()
    ORACLE.to_parquet(oracle / "samples.parquet")
    nowhere = tmp_path / "nowhere"
    with pytest.raises(EvalInputError, match=f"--target {nowhere}: {nowhere / 'samples.parquet'} not found"):
        recipe.run(params, tiny_model_dir, smoke_data, tmp_path / "out", oracle=oracle, target=nowhere)
    with pytest.raises(EvalInputError, match="needs the target's per-sample table.*no --target was given"):
        recipe.run(params, tiny_model_dir, smoke_data, tmp_path / "out", oracle=oracle)
    assert not (tmp_path / "out").exists()
    # the pretrained model has no oracle or target by design: the metric is left out, not an error
    assert metrics_to_run(["relearn_recovery", "split_means"], "pretrained", set()) == ["split_means"]


# ---------------------------------------------------------------------------------- end to end

RELEARN = {"steps": 4, "lr": 1.0e-3, "batch_size": 4, "fraction": 0.25}


def study_config() -> dict:
    config = smoke_config()
    config["evaluate"]["metrics"] = ["split_means", "relearn_recovery"]
    config["evaluate"]["relearn"] = dict(RELEARN)
    return config


def recipe_params(model: str, **coords) -> dict:
    return stage_params(study_config(), "evaluate", model=model, regularizer="none", seed=0, split="forget10", **coords)


def fit_on_forget(tiny_model_dir, smoke_data, out, steps: int):
    """The tiny random model fine-tuned on the forget QA: a target that knows the forget set
    (many steps) or one that half knows it (a few)."""
    torch.manual_seed(0)
    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    rows = read_jsonl(smoke_data / "qa" / "forget10.jsonl")
    loader = Loader([encode_qa(tok, r["question"], r["answer"]) for r in rows], 8, tok.pad_token_id, 0)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=3e-3, max_steps=steps, warmup_ratio=0.0, min_lr_ratio=1.0)
    save_model(train(model, partial(lm_loss, regularizers=()), iter(loader), steps, cfg, desc="fit"), tok, out)
    return out


def evaluate(cwd, config, env, model_dir, data, model, out, *options):
    args = ["forgetlab", "evaluate", "--config", config, "--model-dir", model_dir, "--data", data, "--at", f"model={model}",
            "--at", "regularizer=none", "--at", "seed=0", "--at", "split=forget10", "--out", out, *options]
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((cwd / out / "metrics.json").read_text())["metrics"]
    return metrics, pd.read_parquet(cwd / out / "samples.parquet")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, served, smoke_data, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("relearn")
    config = tmp / "study.yaml"
    config.write_text(yaml.safe_dump(study_config()))
    target = fit_on_forget(tiny_model_dir, smoke_data, tmp / "target-model", steps=60)
    unlearned = fit_on_forget(tiny_model_dir, smoke_data, tmp / "unlearned-model", steps=8)
    run = partial(evaluate, tmp, config, cli_env(**served))  # as the Snakefile runs them: through the fork server
    out = {"oracle": run(tiny_model_dir, smoke_data, "oracle", "oracle-eval")}
    out["target"] = run(target, smoke_data, "target", "target-eval", "--oracle", "oracle-eval")
    for name in ("unlearned", "unlearned-again"):
        out[name] = run(unlearned, smoke_data, "unlearned", f"{name}-eval", "--at", "method=grad_ascent",
                        "--oracle", "oracle-eval", "--target", "target-eval")
    return out


def test_evaluate_runs_the_attack_for_every_model(evaluated):
    for name, (metrics, samples) in evaluated.items():
        assert KEYS <= metrics.keys() and all(np.isfinite(metrics[k]) for k in KEYS), name
        forget = samples[samples["split"] == "forget"]
        assert forget["relearn_subset"].sum() == round(RELEARN["fraction"] * len(forget))
        rest = forget[~forget["relearn_subset"]]
        assert rest["relearn_prob"].notna().all() and forget.loc[forget["relearn_subset"], "relearn_prob"].isna().all()
        assert samples.loc[samples["split"] != "forget", "relearn_prob"].isna().all()
        assert not samples.loc[samples["split"] != "forget", "relearn_subset"].any()
        # the relearned copy changed: its held-out forget prob is not the model's own
        assert not np.allclose(rest["relearn_prob"], rest["prob"], rtol=0, atol=1e-6), name
    subsets = {name: set(s.loc[s["relearn_subset"], "id"]) for name, (_, s) in evaluated.items()}
    assert len({frozenset(s) for s in subsets.values()}) == 1  # the same division for every model
    assert evaluated["oracle"][0]["relearn_recovery"] == 0.0
    assert evaluated["oracle"][0]["relearn_recovery_rouge"] == 0.0


def test_unlearned_recovery_follows_the_formula(evaluated):
    metrics, samples = evaluated["unlearned"]
    oracle = evaluated["oracle"][1].set_index(["split", "id"])
    target = evaluated["target"][1].set_index(["split", "id"])
    rest = samples[(samples["split"] == "forget") & ~samples["relearn_subset"]].set_index(["split", "id"])
    o, t = oracle.loc[rest.index], target.loc[rest.index]
    assert rest["target_prob"].tolist() == t["prob"].tolist()
    assert metrics["relearn_recovery"] == pytest.approx(
        (rest["relearn_prob"].mean() - o["relearn_prob"].mean()) / (t["prob"].mean() - o["prob"].mean()))
    assert metrics["relearn_forget_prob"] == pytest.approx(rest["relearn_prob"].mean())


def test_the_attack_is_deterministic(evaluated):
    (first, a), (second, b) = evaluated["unlearned"], evaluated["unlearned-again"]
    assert first == second
    columns = ["id", "relearn_subset", "relearn_prob", "relearn_rouge_l_recall"]
    pd.testing.assert_frame_equal(a[columns], b[columns])
