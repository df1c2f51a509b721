"""Batched per-sample scoring of a causal LM on TOFU-schema QA splits.

For every QA row (question q, answer a, paraphrase ã, perturbations â_i) the table holds:

* ``answer_nll``  mean per-token negative log-likelihood of " " + a + eos given the prompt, and
  ``answer_tokens`` its token count (TOFU, Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning");
* ``prob``        exp(-answer_nll) = P(a|q)^(1/|a|), TOFU's length-normalised answer probability;
* ``paraphrased_prob`` / ``perturbed_prob``  the same for ã and the arithmetic mean over the â_i
  (``paraphrased_nll`` / ``perturbed_nll``: the NLL of ã and the mean NLL over the â_i);
* ``truth_ratio`` R = exp(-perturbed_nll) / exp(-NLL(c)) = exp(NLL(c) - perturbed_nll): the
  geometric mean of the P(â_i|q)^(1/|â_i|) over the correct answer's P(c|q)^(1/|c|), as TOFU's code
  and open-unlearning's ``truth_ratio`` (the TOFU paper writes an arithmetic mean: perturbed_prob /
  paraphrased_prob). The correct answer c is, as in open-unlearning's configs, the paraphrase ã on
  forget, retain and holdout and the answer a itself on real_authors and world_facts
  (ANSWER_IS_CORRECT); ``truth_ratio_para`` takes ã on every split (forgetlab's variant: the world
  renders the â_i with ã's template, so ã and the â_i differ in the fact only);
* ``option_prob`` P(a)/(P(a) + Σ_i P(â_i)), length-normalised: TOFU's answer probability over the
  options (open-unlearning's ``probability_w_options``), used for real authors and world facts;
  ``option_prob_para`` P(ã)/(P(ã) + Σ_i P(â_i)), the same with the template-matched paraphrase;
  ``option_correct_para`` 1 if P(ã) is strictly the largest of P(ã), P(â_i), else 0: the
  multiple-choice accuracy over the same options (a tie counts as 0);
* ``truth_ratio_value`` and ``option_prob_value`` (forgetlab's variants): ``truth_ratio_para`` and
  ``option_prob_para`` with each probability length-normalised over the value's tokens alone. ã and
  each â_i share their template, so a pair differs in a span (`differing_spans`: their common
  prefix and suffix cut off); P(ã) and P(â_i) are exp(mean log p) over that span, each pair's own,
  instead of over the whole sentence, in which a one- or two-token value is diluted
  (docs/metrics.md, "Model utility on the value");
* ``generated``   the greedy answer; ``rouge_l_recall`` (TOFU) and ``rouge_l_f1`` (MUSE knowmem)
  of it against a;
* per answer token (list columns, one entry per token of " " + a + eos):
  ``answer_token_logp`` log p(y_t|<t), ``answer_token_match`` argmax p(.|<t) == y_t,
  ``answer_token_mu`` / ``answer_token_sigma`` mean and std of log p(z|<t) under z ~ p(.|<t);
  the token-level metrics drop the last entry, the eos, as open-unlearning does
  (`forgetlab.metrics.answer_tokens`), while answer_nll, prob and the truth ratio keep it, as
  open-unlearning's ``evaluate_probability`` does;
* ``answer_zlib`` len(zlib.compress(a as UTF-8)) (zlib attack);
* ``grad_norm`` the GradNorm statistic of the answer (see eval_passes.grad_norms: train mode, eos
  dropped, dropout masks seeded with ``seed``), on the membership-inference splits only (NaN elsewhere);
* verbmem, on the forget split only: the prompt plus the first half (n // 2 of n tokens, eos
  excluded) of the answer's tokens is the prefix; ``verbmem_continuation`` is the true rest of
  the answer, ``verbmem_generated`` the greedy continuation and ``verbmem_rouge_l_f1`` their
  ROUGE-L F1. The prefix is the verbatim training sequence of the forget QA: the forget authors
  have no rows in corpus.jsonl, and their answers were never trained on concatenated.
* form robustness (ORT), on the forget split only (NaN elsewhere, and on rows without form
  fields): ``form_paraphrased_prob``, ``form_cloze_prob``, ``form_cloze_value_prob``,
  ``form_mc_option_prob`` and ``form_mc_correct``, the fact asked in forms never trained on (see
  `forgetlab.eval.forms`).

One forward pass per padded batch yields every likelihood value (answers, paraphrases and
perturbations of all rows together; a row's answers packed after its prompt, which runs once:
`eval_passes.grouped_token_stats`); one batched greedy decoding covers the QA answers and the
verbmem continuations; GradNorm is the only backward pass (vmap over samples). The forms of the
forget rows take one more batched likelihood pass. ``timings`` collects the wall time of each
part ("logprob", "generation", "gradnorm", "forms"). All but the likelihood pass are optional
(PASS_COLUMNS): the evaluation runs those that its metrics read (`forgetlab.eval.plan`).
"""

from __future__ import annotations

import functools
import math
import zlib

import numpy as np
import pandas as pd

from forgetlab.eval.forms import FORM_COLUMNS, NO_FORMS, score_forms
from forgetlab.eval.passes import greedy_continuations, grad_norms, grouped_token_stats, timed, token_stats
from forgetlab.metrics import EvalInputError
from forgetlab.qa import IGNORE, encode_prompt, encode_qa, qa_parts

COLUMNS = [
    "split", "id", "entity_id", "attribute", "question", "answer",
    "answer_nll", "answer_tokens", "prob", "paraphrased_nll", "paraphrased_prob",
    "perturbed_nll", "perturbed_prob", "truth_ratio", "truth_ratio_para", "generated", "rouge_l_recall",
    "option_prob", "option_prob_para", "option_correct_para", "truth_ratio_value", "option_prob_value", "rouge_l_f1", "answer_token_logp", "answer_token_match", "answer_token_mu",
    "answer_token_sigma", "answer_zlib", "grad_norm",
    "verbmem_prefix_tokens", "verbmem_continuation", "verbmem_generated", "verbmem_rouge_l_f1",
    *FORM_COLUMNS,
]
MIA_SPLITS = ("forget", "holdout")
# splits whose truth ratio takes the answer itself as the correct one (open-unlearning's ra/wf
# Truth_Ratio configs); elsewhere it is the paraphrased answer (forget/retain_Truth_Ratio)
ANSWER_IS_CORRECT = ("real_authors", "world_facts")
VERBMEM_SPLITS = ("forget",)
FORMS_SPLITS = ("forget",)
# the optional passes of score_model and the COLUMNS each fills; the likelihood pass, always run,
# fills the others. A pass not run leaves its columns empty: "" for generated, NaN or None else.
PASS_COLUMNS = {
    "generation": ("generated", "rouge_l_recall", "rouge_l_f1",
                   "verbmem_prefix_tokens", "verbmem_continuation", "verbmem_generated", "verbmem_rouge_l_f1"),
    "gradnorm": ("grad_norm",),
    "forms": tuple(FORM_COLUMNS),
}

@functools.cache
def _scorer():
    from rouge_score import rouge_scorer  # imported on first use: it pulls in nltk (~1 s per job)

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(generated: str, reference: str):
    """ROUGE-L (rouge-score, Porter stemming) of ``generated`` against ``reference``."""
    return _scorer().score(reference, generated)["rougeL"]


def rouge_l_recall(generated: str, reference: str) -> float:
    """ROUGE-L recall (LCS / reference length, rouge-score tokenisation) of ``generated``."""
    return float(rouge_l(generated, reference).recall)


def rouge_l_f1(generated: str, reference: str) -> float:
    """ROUGE-L F1 (harmonic mean of LCS precision and recall) of ``generated``."""
    return float(rouge_l(generated, reference).fmeasure)


def differing_spans(a: list[int], b: list[int]) -> tuple[slice, slice]:
    """The spans of two token lists left once their common prefix and suffix are cut off: where a
    paraphrase and a perturbed answer written in one template differ (the value). The whole lists
    where that leaves either span empty."""
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    q = 0
    while q < min(len(a), len(b)) - p and a[-1 - q] == b[-1 - q]:
        q += 1
    if p + q >= min(len(a), len(b)):
        return slice(0, len(a)), slice(0, len(b))
    return slice(p, len(a) - q), slice(p, len(b) - q)


def value_ratios(correct: tuple[list[int], np.ndarray], perturbed: list[tuple[list[int], np.ndarray]]) -> list[float]:
    """log(P(w) / P(c)) for each perturbed answer w against the correct one c, each probability
    length-normalised over the pair's differing span only (`differing_spans`; tokens and their log p)."""
    out = []
    for tokens, logp in perturbed:
        c, w = differing_spans(correct[0], tokens)
        out.append(float(np.mean(logp[w]) - np.mean(correct[1][c])))
    return out


def ratio_exp(x: float) -> float:
    """exp(x) of a log ratio: inf where it overflows (an unlearned model's answer NLL can be large)."""
    return math.inf if x >= 700 else math.exp(x)  # NaN stays NaN


def supervised(encoding: dict) -> list[int]:
    """The tokens an encoding's TokenStats are of, in order: its labels but the first, unsupervised ones dropped."""
    return [t for t in encoding["labels"][1:] if t != IGNORE]


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def sequence_nll(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 32) -> list[tuple[float, int]]:
    """(mean per-token answer NLL, number of answer tokens) for each (question, answer) pair."""
    stats = token_stats(model, [encode_qa(tokenizer, q, a) for q, a in pairs], pad_id(tokenizer), batch_size)
    return [(s.nll, len(s.logp)) for s in stats]


def greedy_answers(model, tokenizer, questions: list[str], batch_size: int = 32, max_new_tokens: int = 40) -> list[str]:
    """Greedy answers for ``questions``, generated in left-padded batches; only new tokens decoded."""
    prompts = [encode_prompt(tokenizer, q) for q in questions]
    new = greedy_continuations(model, prompts, pad_id(tokenizer), tokenizer.eos_token_id, batch_size, max_new_tokens)
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in new]


def check_rows(rows: list[dict], split: str) -> None:
    """An empty split, or a row without an answer, is an error that names the split and the row."""
    if not rows:
        raise EvalInputError(f"split {split!r} has no rows to evaluate")
    for i, r in enumerate(rows):
        if not str(r.get("question") or "").strip():
            raise EvalInputError(f"split {split!r}, row {r.get('id', i)!r}: empty question")
        if not str(r.get("answer") or "").strip():
            raise EvalInputError(f"split {split!r}, row {r.get('id', i)!r}: empty answer (zero answer tokens)")


def verbmem_prompt(tokenizer, question: str, answer: str) -> tuple[list[int], int, str]:
    """(prefix ids, prefix answer tokens h, true continuation text) for one forget QA row:
    prompt + the first h = n // 2 of the n answer tokens (" " + answer in the plain format; the end
    tokens, eos included, excluded; see forgetlab.qa.qa_parts)."""
    prompt, reply, _ = qa_parts(tokenizer, question, answer)
    h = len(reply) // 2
    return prompt + reply[:h], h, tokenizer.decode(reply[h:], skip_special_tokens=True).strip()


def memoised_encoding(tokenizer, encodings: dict, question: str, answer: str) -> dict:
    """encode_qa(tokenizer, question, answer), kept in `encodings` under (question, answer)."""
    key = (question, answer)
    if key not in encodings:
        encodings[key] = encode_qa(tokenizer, question, answer)
    return encodings[key]


def score_split(model, tokenizer, rows: list[dict], split: str, batch_size: int = 32,
                max_new_tokens: int = 40, generate: bool = True, grad_norm: bool = False,
                verbmem: bool = False, timings: dict | None = None,
                forms: bool = False, seed: int = 0, encodings: dict | None = None,
                token_stats: bool = True) -> pd.DataFrame:
    """One row per QA of ``rows`` with likelihood, truth-ratio and generation scores (see COLUMNS).

    With ``generate=False`` only the likelihood pass runs (``generated`` is empty and the ROUGE
    columns NaN): the cheap form used for unlearning trajectories. ``grad_norm`` adds the GradNorm
    statistic (its dropout masks seeded with ``seed``), ``verbmem`` the verbatim-memorization
    continuations (needs ``generate``), ``forms`` the form-robustness columns (NaN without it, and
    on rows that have no form fields). ``encodings``, a dict the caller keeps between calls on the
    same tokenizer, memoises the QA encodings (an unlearning trajectory scores the same rows at every
    recorded step); its values must not be modified. Without ``token_stats`` the per-token
    ``answer_token_match``, ``answer_token_mu`` and ``answer_token_sigma`` are NaN (the trajectory
    reads none of them; every other column is the same)."""
    check_rows(rows, split)
    pad, eos = pad_id(tokenizer), tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        # One flat list of every sequence to score; remember which slice belongs to which row.
        encoded, spans, groups = [], [], []
        encode = functools.partial(memoised_encoding, tokenizer, {} if encodings is None else encodings)
        for r in rows:
            q, para, pert = r["question"], r.get("paraphrased_answer"), list(r.get("perturbed_answer") or [])
            a0 = len(encoded)
            groups.append([encode(q, a) for a in [r["answer"], *([para] if para else []), *pert]])
            encoded += groups[-1]
            spans.append((a0, bool(para), len(pert)))
        with timed(timings, "logprob"):  # a row's answers share its prompt: one packed sequence per row
            stats = [s for g in grouped_token_stats(model, groups, pad, batch_size, token_stats) for s in g]
        for r, (a0, _, _) in zip(rows, spans):
            if len(stats[a0].logp) == 0:
                raise EvalInputError(f"split {split!r}, row {r.get('id')!r}: no answer tokens left after truncation")
        generated, verb = [None] * len(rows), [None] * len(rows)
        if generate:
            prompts = [encode_prompt(tokenizer, r["question"]) for r in rows]
            vm = [verbmem_prompt(tokenizer, r["question"], r["answer"]) for r in rows] if verbmem else []
            with timed(timings, "generation"):
                new = greedy_continuations(model, prompts + [v[0] for v in vm], pad, eos, batch_size, max_new_tokens)
            text = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in new]
            generated = text[:len(rows)]
            if verbmem:
                verb = [(h, truth, gen) for (_, h, truth), gen in zip(vm, text[len(rows):])]
        norms = [math.nan] * len(rows)
        if grad_norm:
            with timed(timings, "gradnorm"):
                norms = grad_norms(model, [encoded[a0] for a0, _, _ in spans], pad, batch_size, seed=seed)
        form_cols = (score_forms(model, tokenizer, rows, batch_size, split, timings) if forms
                     else [NO_FORMS] * len(rows))
    finally:
        model.train(was_training)

    records = []
    for r, (a0, has_para, n_pert), gen, vb, gn, fc in zip(rows, spans, generated, verb, norms, form_cols):
        ans = stats[a0]
        nll = ans.nll
        k = a0 + 1
        para_nll = math.nan
        if has_para:
            para_nll = stats[k].nll
            k += 1
        pert_nlls = [s.nll for s in stats[k:k + n_pert]]
        para_prob = math.exp(-para_nll)
        pert_probs = [math.exp(-x) for x in pert_nlls]
        pert_prob = sum(pert_probs) / n_pert if n_pert else math.nan
        pert_nll = sum(pert_nlls) / n_pert if n_pert else math.nan
        correct_nll = nll if split in ANSWER_IS_CORRECT else para_nll
        options = math.exp(-nll) / (math.exp(-nll) + sum(pert_probs)) if n_pert else math.nan
        options_para = para_prob / (para_prob + sum(pert_probs)) if has_para and n_pert else math.nan
        correct_para = float(para_prob > max(pert_probs)) if has_para and n_pert else math.nan
        value = value_ratios((supervised(encoded[a0 + 1]), stats[a0 + 1].logp),
                             [(supervised(encoded[j]), stats[j].logp) for j in range(k, k + n_pert)]) if has_para else []
        records.append({
            "split": split,
            "id": r.get("id"),
            "entity_id": r.get("entity_id"),
            "attribute": r.get("attribute"),
            "question": r["question"],
            "answer": r["answer"],
            "answer_nll": nll,
            "answer_tokens": len(ans.logp),
            "prob": math.exp(-nll),
            "paraphrased_nll": para_nll,
            "paraphrased_prob": para_prob,
            "perturbed_nll": pert_nll,
            "perturbed_prob": pert_prob,
            "truth_ratio": ratio_exp(correct_nll - pert_nll),
            "truth_ratio_para": ratio_exp(para_nll - pert_nll),
            "generated": gen or "",
            "rouge_l_recall": rouge_l_recall(gen, r["answer"]) if gen is not None else math.nan,
            "option_prob": options,
            "option_prob_para": options_para,
            "option_correct_para": correct_para,
            "truth_ratio_value": ratio_exp(sum(value) / len(value)) if value else math.nan,
            "option_prob_value": 1 / (1 + sum(ratio_exp(v) for v in value)) if value else math.nan,
            "rouge_l_f1": rouge_l_f1(gen, r["answer"]) if gen is not None else math.nan,
            "answer_token_logp": ans.logp.tolist(),
            "answer_token_match": ans.match.tolist(),
            "answer_token_mu": ans.mu.tolist(),
            "answer_token_sigma": ans.sigma.tolist(),
            "answer_zlib": len(zlib.compress(r["answer"].encode("utf-8"))),
            "grad_norm": gn,
            "verbmem_prefix_tokens": vb[0] if vb else None,
            "verbmem_continuation": vb[1] if vb else None,
            "verbmem_generated": vb[2] if vb else None,
            "verbmem_rouge_l_f1": rouge_l_f1(vb[2], vb[1]) if vb else math.nan,
            **fc,
        })
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def score_model(model, tokenizer, splits: dict[str, list[dict]], batch_size: int = 32,
                max_new_tokens: int = 40, grad_norm_splits=MIA_SPLITS, verbmem_splits=VERBMEM_SPLITS,
                timings: dict | None = None, forms_splits=FORMS_SPLITS, seed: int = 0,
                passes=tuple(PASS_COLUMNS)) -> pd.DataFrame:
    """Concatenation of ``score_split`` over ``{split name: rows}``: the likelihood pass, and the
    optional ``passes`` (of PASS_COLUMNS; all by default): the greedy generation (with verbmem on
    ``verbmem_splits``), GradNorm on ``grad_norm_splits`` and the form-robustness columns on
    ``forms_splits`` (by default GradNorm on the membership-inference splits, the other two on
    forget); ``seed`` seeds GradNorm's dropout masks. A pass's values do not depend on which other
    passes run."""
    unknown = set(passes) - set(PASS_COLUMNS)
    if unknown:
        raise ValueError(f"unknown scoring pass(es) {', '.join(sorted(unknown))}; known: {', '.join(PASS_COLUMNS)}")
    generate = "generation" in passes
    frames = [score_split(model, tokenizer, rows, name, batch_size, max_new_tokens, generate=generate,
                          grad_norm="gradnorm" in passes and name in grad_norm_splits,
                          verbmem=generate and name in verbmem_splits, timings=timings,
                          forms="forms" in passes and name in forms_splits, seed=seed)
              for name, rows in splits.items()]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)
