"""Batched per-sample scoring of a causal LM on TOFU-schema QA splits.

For every QA row this computes (TOFU, Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning
for LLMs"):

* ``answer_nll``  mean per-token negative log-likelihood of " " + answer + eos given the prompt;
* ``prob``        exp(-answer_nll) = P(a|q)^(1/|a|), TOFU's length-normalised answer probability;
* ``paraphrased_prob`` / ``perturbed_prob``  the same for the paraphrased answer ã and the mean
  over the perturbed answers â_i;
* ``truth_ratio`` R = mean_i P(â_i|q)^(1/|â_i|) / P(ã|q)^(1/|ã|)  (the paper's formula, an
  arithmetic mean over perturbed answers; TOFU's code uses the geometric mean instead);
* ``generated``   the greedy answer, and ``rouge_l_recall`` its ROUGE-L recall against the answer.

All likelihoods come from one batched, right-padded forward pass per batch of sequences
(answers, paraphrases and perturbations of a chunk of rows together); generation is batched
greedy decoding on left-padded prompts.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from rouge_score import rouge_scorer

from forgetlab.qa import collate, encode_prompt, encode_qa, token_logprobs

COLUMNS = [
    "split", "id", "entity_id", "attribute", "question", "answer",
    "answer_nll", "answer_tokens", "prob", "paraphrased_nll", "paraphrased_prob",
    "perturbed_nll", "perturbed_prob", "truth_ratio", "generated", "rouge_l_recall",
]

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(generated: str, reference: str) -> float:
    """ROUGE-L recall (LCS / reference length, rouge-score tokenisation) of ``generated``."""
    return float(_SCORER.score(reference, generated)["rougeL"].recall)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def sequence_nll(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 32) -> list[tuple[float, int]]:
    """(mean per-token answer NLL, number of answer tokens) for each (question, answer) pair.

    Sequences are right-padded into batches of ``batch_size``; padding never changes the result
    because the attention mask hides pad tokens and position ids start at 0 for every row.
    """
    device, pad = _device(model), _pad_id(tokenizer)
    encoded = [encode_qa(tokenizer, q, a) for q, a in pairs]
    out: list[tuple[float, int]] = []
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded[start:start + batch_size], pad)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp, mask = token_logprobs(logits, batch["labels"])
        count = mask.sum(-1)
        nll = -logp.sum(-1) / count.clamp(min=1)
        for n, c in zip(nll.tolist(), count.tolist()):
            out.append((n if c > 0 else math.nan, int(c)))
    return out


@torch.no_grad()
def greedy_answers(model, tokenizer, questions: list[str], batch_size: int = 32, max_new_tokens: int = 40) -> list[str]:
    """Greedy answers for ``questions``, generated in left-padded batches; only new tokens decoded."""
    device, pad = _device(model), _pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        prompts = [encode_prompt(tokenizer, q) for q in questions[start:start + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
            max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
            temperature=None, top_p=None, top_k=None,
        )
        for row in gen[:, width:].tolist():
            if eos in row:
                row = row[:row.index(eos)]
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers


def score_split(model, tokenizer, rows: list[dict], split: str, batch_size: int = 32,
                max_new_tokens: int = 40) -> pd.DataFrame:
    """One row per QA of ``rows`` with likelihood, truth-ratio and generation scores (see COLUMNS)."""
    was_training = model.training
    model.eval()
    try:
        # One flat list of every sequence to score; remember which slice belongs to which row.
        pairs: list[tuple[str, str]] = []
        spans = []
        for r in rows:
            q = r["question"]
            para = r.get("paraphrased_answer")
            pert = list(r.get("perturbed_answer") or [])
            a0 = len(pairs)
            pairs.append((q, r["answer"]))
            if para:
                pairs.append((q, para))
            pairs.extend((q, p) for p in pert)
            spans.append((a0, bool(para), len(pert)))
        scores = sequence_nll(model, tokenizer, pairs, batch_size)
        generated = greedy_answers(model, tokenizer, [r["question"] for r in rows], batch_size, max_new_tokens)
    finally:
        model.train(was_training)

    records = []
    for r, (a0, has_para, n_pert), gen in zip(rows, spans, generated):
        nll, n_tok = scores[a0]
        k = a0 + 1
        para_nll = math.nan
        if has_para:
            para_nll = scores[k][0]
            k += 1
        pert_nlls = [s[0] for s in scores[k:k + n_pert]]
        para_prob = math.exp(-para_nll)
        pert_prob = sum(math.exp(-x) for x in pert_nlls) / n_pert if n_pert else math.nan
        records.append({
            "split": split,
            "id": r.get("id"),
            "entity_id": r.get("entity_id"),
            "attribute": r.get("attribute"),
            "question": r["question"],
            "answer": r["answer"],
            "answer_nll": nll,
            "answer_tokens": n_tok,
            "prob": math.exp(-nll),
            "paraphrased_nll": para_nll,
            "paraphrased_prob": para_prob,
            "perturbed_nll": sum(pert_nlls) / n_pert if n_pert else math.nan,
            "perturbed_prob": pert_prob,
            "truth_ratio": pert_prob / para_prob if para_prob > 0 else math.nan,
            "generated": gen,
            "rouge_l_recall": rouge_l_recall(gen, r["answer"]),
        })
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def score_model(model, tokenizer, splits: dict[str, list[dict]], batch_size: int = 32,
                max_new_tokens: int = 40) -> pd.DataFrame:
    """Concatenation of ``score_split`` over ``{split name: rows}``."""
    frames = [score_split(model, tokenizer, rows, name, batch_size, max_new_tokens)
              for name, rows in splits.items()]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)
