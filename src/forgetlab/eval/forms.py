"""Form robustness: the forget facts probed in other forms than the trained QA form.

After Ye et al. 2025, "LLM Unlearning Should Be Form-Independent" (ORT): an unlearning method
that removes the trained question/answer pair may leave the same knowledge reachable when it is
asked differently. prepare_data (`forgetlab.data.world.make_qa`) writes three untrained forms on
every QA row; this module scores them with the model, per row:

* ``form_paraphrased_prob``  P(a | q̃)^(1/|a|): the answer sentence a given the paraphrased
  question q̃ (``paraphrased_question``);
* ``form_cloze_prob``        P(v | c)^(1/|v|): the value v (``cloze_answer``) given the
  fill-in-the-blank statement c (``cloze_question``);
* ``form_cloze_value_prob``  P(v | c): the same, not length-normalised: the probability that the
  model fills the blank with exactly the value. The knowledge measure of the fill-in-the-blank
  (docs/metrics.md): for a value of several tokens (an award, a publisher, a book title) the later
  tokens follow from the first and the end-of-sequence token from the value, so the per-token mean
  gives a model that never saw the fact much of the credit (the default study's oracles 0.17-0.24
  per token on award, publisher and debut book, stop 29);
* ``form_mc_option_prob``    p_* / Σ_k p_k with p_k = P(s_k | m)^(1/|s_k|), m the multiple-choice
  question that lists the options (``mc_question``) and s_k option k as an answer sentence in the
  paraphrase's template (``mc_answers``: the paraphrased answer for the true option, the perturbed
  answers for the others); p_* is the true option's (``mc_answer_index``). TOFU's option
  probability, over the listed options. Deliberately not ORT's bare option: the tiny model
  answers in sentences, and scoring the bare value measured the answer's format, not the fact
  (the default study's targets and oracles alike at chance, 0.22-0.33, before this change);
* ``form_mc_correct``        1 if p_* is strictly the largest p_k, else 0 (a tie counts as 0).

Every probability is exp(-mean NLL) over the answer tokens (" " + answer + eos), in the
training prompt format, as in `forgetlab.eval.scoring`; the original form is the table's ``prob``.
All sequences of all rows go through one batched likelihood pass (`eval_passes.token_stats`).
A row without form fields (real TOFU data) gets NaN; a row with only some of them is an error.
"""

from __future__ import annotations

import math

from forgetlab.data.world import FORM_FIELDS
from forgetlab.eval.passes import TokenStats, timed, token_stats
from forgetlab.metrics import EvalInputError
from forgetlab.qa import encode_qa

FORM_COLUMNS = ["form_paraphrased_prob", "form_cloze_prob", "form_cloze_value_prob", "form_mc_option_prob",
                "form_mc_correct"]
NO_FORMS = dict.fromkeys(FORM_COLUMNS, math.nan)


def has_forms(row: dict, split: str = "?") -> bool:
    """True if the row carries every form field, False if none; an error if only some, or if the
    multiple-choice fields do not fit together."""
    present = [f for f in FORM_FIELDS if row.get(f) is not None]
    if not present:
        return False
    where = f"split {split!r}, row {row.get('id')!r}"
    if len(present) < len(FORM_FIELDS):
        missing = [f for f in FORM_FIELDS if f not in present]
        raise EvalInputError(f"{where}: has some form fields but not {', '.join(missing)}")
    options, index, answers = row["mc_options"], row["mc_answer_index"], row["mc_answers"]
    if (not isinstance(options, (list, tuple)) or len(options) < 2 or not all(str(o).strip() for o in options)
            or isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(options)):
        raise EvalInputError(f"{where}: mc_options must be 2 or more non-empty options and mc_answer_index "
                             f"an index into them, got {options!r} and {index!r}")
    if (not isinstance(answers, (list, tuple)) or len(answers) != len(options)
            or not all(str(s).strip() for s in answers)):
        raise EvalInputError(f"{where}: mc_answers must be one non-empty answer sentence per option, got {answers!r}")
    for f in ("paraphrased_question", "cloze_question", "cloze_answer", "mc_question"):
        if not str(row[f]).strip():
            raise EvalInputError(f"{where}: empty {f}")
    return True


def form_pairs(row: dict) -> list[tuple[str, str]]:
    """The (prompt question, answer) pairs of a row's forms: paraphrased, cloze, then each option."""
    return [(row["paraphrased_question"], row["answer"]), (row["cloze_question"], row["cloze_answer"]),
            *[(row["mc_question"], str(s)) for s in row["mc_answers"]]]


def form_scores(row: dict, stats: list[TokenStats]) -> dict[str, float]:
    """The FORM_COLUMNS of one row from the TokenStats of its form_pairs, in the same order."""
    probs = [math.exp(-s.nll) for s in stats]
    options = probs[2:]
    true = options[row["mc_answer_index"]]
    total = sum(options)
    others = [p for k, p in enumerate(options) if k != row["mc_answer_index"]]
    return {
        "form_paraphrased_prob": probs[0],
        "form_cloze_prob": probs[1],
        "form_cloze_value_prob": math.exp(float(stats[1].logp.sum())),
        "form_mc_option_prob": true / total if total > 0 else math.nan,
        "form_mc_correct": float(true > max(others)),
    }


def score_forms(model, tokenizer, rows: list[dict], batch_size: int = 32, split: str = "forget",
                timings: dict | None = None) -> list[dict[str, float]]:
    """FORM_COLUMNS for each row (NaN for a row without forms), from one batched likelihood pass;
    its wall time is added to ``timings["forms"]``."""
    encoded, spans = [], []
    for r in rows:
        pairs = form_pairs(r) if has_forms(r, split) else []
        spans.append((len(encoded), len(pairs)))
        encoded += [encode_qa(tokenizer, q, a) for q, a in pairs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        with timed(timings, "forms"):
            stats = token_stats(model, encoded, pad, batch_size) if encoded else []
    finally:
        model.train(was_training)
    out = []
    for r, (a, n) in zip(rows, spans):
        if n and any(len(s.logp) == 0 for s in stats[a:a + n]):
            raise EvalInputError(f"split {split!r}, row {r.get('id')!r}: a form has no answer tokens left "
                                 "after truncation")
        out.append(form_scores(r, stats[a:a + n]) if n else dict(NO_FORMS))
    return out
