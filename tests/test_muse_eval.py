"""A muse study's evaluation (forgetlab.eval.muse) and the MUSE metrics on its table: worked
examples against MUSE's formulas computed here independently (ROUGE-L F1 from a longest common
subsequence, Min-K% Prob, the AUC by counting pairs, PrivLeak), and the table's columns against
the tiny Llama's own logits and greedy generation."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from forgetlab.data import prepare_data
from forgetlab.eval.muse import cut_at_stopwords, score_muse
from forgetlab.eval.scoring import COLUMNS, rouge_l_f1
from forgetlab.metrics import compute_metrics
from forgetlab.model import load_model, load_tokenizer
from forgetlab.recipes import read_jsonl
from tests.muse_fixtures import all_texts, corpus, tiny_llama, write_corpus

K = 0.4  # MUSE's Min-K% Prob fraction


def lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def f1(generated: str, reference: str) -> float:
    g, r = generated.lower().split(), reference.lower().split()
    n = lcs(g, r)
    return 0.0 if n == 0 else 2 * (n / len(g)) * (n / len(r)) / (n / len(g) + n / len(r))


def min_k(logp: list[float]) -> float:
    tokens = sorted(logp[:-1])  # the eos is not a text token
    return sum(tokens[:max(1, int(len(tokens) * K))]) / max(1, int(len(tokens) * K))


def auc(members: list[float], non_members: list[float]) -> float:
    pairs = [(m > n) + 0.5 * (m == n) for m in members for n in non_members]
    return sum(pairs) / len(pairs)


def row(split: str, i: int, **values) -> dict:
    return {**{c: math.nan for c in COLUMNS}, "split": split, "id": f"{split}-{i}", **values}


def logps(score: float) -> list[float]:
    """Six per-token values (five text tokens + eos) whose Min-K% (k = 0.4: the 2 lowest of 5) is `score`."""
    return [score, score, 0.0, 0.0, 0.0, -50.0]


def muse_table(forget: list[float], holdout: list[float], knowmem=(1.0, 0.5), verbmem=(0.25, 0.75)) -> pd.DataFrame:
    rows = [row("privleak_forget", i, answer_token_logp=logps(s)) for i, s in enumerate(forget)]
    rows += [row("privleak_holdout", i, answer_token_logp=logps(s)) for i, s in enumerate(holdout)]
    # knowmem rows with extreme likelihoods: the privleak AUC must not read them
    rows += [row("knowmem_forget", i, rouge_l_f1=v, answer_token_logp=logps(-99.0)) for i, v in enumerate(knowmem)]
    rows += [row("knowmem_retain", i, rouge_l_f1=v) for i, v in enumerate((0.2, 0.4, 0.9))]
    rows += [row("verbmem_forget", i, verbmem_rouge_l_f1=v) for i, v in enumerate(verbmem)]
    return pd.DataFrame(rows, columns=COLUMNS)


def test_rouge_l_f1_is_muse_s_formula():
    for generated, reference in [("a b c", "a x c d"), ("the harbour was quiet", "the old harbour was quiet today"),
                                 ("nothing alike", "entirely different words"), ("same words", "same words")]:
        assert rouge_l_f1(generated, reference) == pytest.approx(f1(generated, reference))
    assert rouge_l_f1("a b c", "a x c d") == pytest.approx(4 / 7)  # LCS 2: P 2/3, R 2/4


def test_knowmem_stops_at_muse_s_stop_words():
    assert cut_at_stopwords("Dr Mara Quell\n\nQuestion: who?") == "Dr Mara Quell"
    assert cut_at_stopwords("Dr Mara Quell\nQuestion: next") == "Dr Mara Quell"
    assert cut_at_stopwords("Warden Elsie Crane Question: x") == "Warden Elsie Crane"
    assert cut_at_stopwords("no stop word here") == "no stop word here"


def test_the_muse_metrics_on_a_worked_table():
    # model: forget Min-K% [-1, -2], holdout [-3, -1.5] -> pairs won 3 of 4: AUC 3/4, MUSE's 1/4
    # oracle: forget [-2, -3], holdout [-1, -2.5]      -> 1 of 4: AUC 1/4, MUSE's 3/4
    model, oracle = muse_table([-1.0, -2.0], [-3.0, -1.5]), muse_table([-2.0, -3.0], [-1.0, -2.5])
    out = compute_metrics(["knowmem", "verbmem", "privleak"], model, oracle)
    muse_model = 1 - auc([min_k(r) for r in model.loc[model.split == "privleak_forget", "answer_token_logp"]],
                         [min_k(r) for r in model.loc[model.split == "privleak_holdout", "answer_token_logp"]])
    assert muse_model == pytest.approx(0.25)
    assert out["privleak"] == pytest.approx((0.25 - 0.75) / 0.75 * 100)  # -66.67
    assert out["forget_knowmem"] == pytest.approx(0.75) and out["retain_knowmem"] == pytest.approx(0.5)
    assert out["forget_verbmem"] == pytest.approx(0.5)
    assert compute_metrics(["privleak"], oracle, role="oracle") == {"privleak": 0.0}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("muse-eval")
    data = corpus()
    model_dir = tiny_llama(root / "target", all_texts(data))
    out = root / "data"
    prepare_data({"source": "muse", "path": str(write_corpus(root / "muse", data)), "seed": 0,
                  "tokenizer_from": str(model_dir)}, out)
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    ev = {"batch_size": 3, "max_new_tokens": 6, "max_length": 24, "verbmem_max_new_tokens": 5}
    return {"table": score_muse(model, tok, out, ev), "model": model, "tok": tok, "data": out, "ev": ev}


def test_privleak_rows_hold_every_text_token_s_logprob(scored):
    model, tok, table = scored["model"], scored["tok"], scored["table"]
    texts = [r["text"] for r in read_jsonl(scored["data"] / "privleak" / "holdout.jsonl")]
    rows = table[table.split == "privleak_holdout"]
    assert len(rows) == len(texts)
    for text, logp in zip(texts, rows["answer_token_logp"]):
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"][:24 - 2] + [tok.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        expected = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)
        assert list(logp) == pytest.approx(expected.tolist(), abs=1e-4)  # every token after <bos>, eos last


def test_verbmem_rows_continue_muse_s_prompts(scored):
    model, tok, table = scored["model"], scored["tok"], scored["table"]
    prompts = read_jsonl(scored["data"] / "verbmem" / "forget.jsonl")
    rows = table[table.split == "verbmem_forget"]
    for r, (_, got) in zip(prompts, rows.iterrows()):
        prompt = tok(r["prompt"], add_special_tokens=False)["input_ids"][:24 - 1]  # evaluate.max_length 24
        ids = torch.tensor([[tok.bos_token_id] + prompt])
        with torch.no_grad():
            new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        new = new.tolist()
        new = new[:new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
        assert got["verbmem_generated"] == tok.decode(new, skip_special_tokens=True).strip()
        assert got["verbmem_continuation"] == r["gt"]
        assert got["verbmem_rouge_l_f1"] == pytest.approx(rouge_l_f1(got["verbmem_generated"], r["gt"]))


def test_metrics_on_the_scored_table_are_its_means(scored):
    table = scored["table"]
    assert set(table.split) == {"privleak_forget", "privleak_holdout", "knowmem_forget", "knowmem_retain",
                                "verbmem_forget"}
    out = compute_metrics(["knowmem", "verbmem", "privleak"], table, table)
    assert out["forget_knowmem"] == pytest.approx(table.loc[table.split == "knowmem_forget", "rouge_l_f1"].mean())
    assert out["retain_knowmem"] == pytest.approx(table.loc[table.split == "knowmem_retain", "rouge_l_f1"].mean())
    assert out["forget_verbmem"] == pytest.approx(table.loc[table.split == "verbmem_forget", "verbmem_rouge_l_f1"].mean())
    members = [min_k(list(v)) for v in table.loc[table.split == "privleak_forget", "answer_token_logp"]]
    holdout = [min_k(list(v)) for v in table.loc[table.split == "privleak_holdout", "answer_token_logp"]]
    assert 1 - auc(members, holdout) > 0  # the oracle against itself is well defined here
    assert out["privleak"] == pytest.approx(0.0)  # the same table as model and oracle: no leak relative to it


def test_without_generation_only_privleak_is_scored(scored):
    table = score_muse(scored["model"], scored["tok"], scored["data"], scored["ev"], passes=())
    assert set(table.split) == {"privleak_forget", "privleak_holdout"}
