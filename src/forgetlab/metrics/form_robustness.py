"""Form robustness of forgetting (Ye, Zhang and Wu 2025, "LLM Unlearning Should Be
Form-Independent", arXiv:2506.07795, the ORT benchmark): the forget facts probed in forms other
than the trained QA form.

Per forget row (see `forgetlab.eval.forms`; all probabilities are exp(-mean answer-token NLL)):
p_orig = P(a | q)^(1/|a|) (``prob``), p_para = P(a | q̃)^(1/|a|) with q̃ the paraphrased question,
p_cloze = P(v | fill-in-the-blank statement)^(1/|v|) with v the value, v_cloze = P(v | that
statement) (not length-normalised: the probability of filling in exactly the value), and over
the k options o_j of the multiple-choice question m, p_mc = p_* / Σ_j p_j (p_j = P(o_j | m)^(1/|o_j|), p_* the
true option's) and correct = [p_* > max_{j≠*} p_j]. The metric returns the forget-split means

    form_original_forget_prob     = mean p_orig
    form_paraphrased_forget_prob  = mean p_para
    form_cloze_forget_prob        = mean p_cloze
    form_cloze_value_forget_prob  = mean v_cloze
    form_mc_forget_option_prob    = mean p_mc          (chance: 1/k)
    form_mc_forget_accuracy       = mean correct       (chance: 1/k)
    form_worst_forget_prob        = max(form_original_forget_prob, form_paraphrased_forget_prob,
                                        form_cloze_forget_prob)

The worst case is the form that leaks most: the largest mean forget probability. It is taken
over the three generative forms only, which share one scale (the length-normalised probability
of the answer given a prompt; the value probability is on another scale and stays out). The
multiple-choice option probability is a share among k listed options with chance level 1/k,
so it would dominate a maximum at chance and say nothing; it is reported on its own, with its
accuracy. ORT reports each form separately and asks that forgetting
hold in all of them; the maximum is this study's single-number summary of that.

The value probability is the fill-in-the-blank's knowledge measure (the issue's target / oracle
ratio, README): a deliberate addition to ORT, which scores the form by the answer's correctness.
Per token, a value's predictable later tokens and its end-of-sequence token give the oracle, that
never saw the fact, much of the credit (forgetlab.eval.forms).

Needs the form fields that prepare_data writes; a table whose forget rows have none (real TOFU
data) is an error naming them. Hand-worked: two forget rows with (p_orig, p_para, p_cloze, p_mc,
correct) = (0.5, 0.4, 0.2, 0.7, 1) and (0.3, 0.6, 0.1, 0.3, 0) give 0.4, 0.5, 0.15, 0.5, 0.5, and
a worst case of 0.5 (the paraphrased form).
"""

from __future__ import annotations

from forgetlab.metrics import METRICS, EvalInputError, split_rows, uses

# forgetlab.data.world.FORM_FIELDS, spelled out so that the metrics stay importable without torch
FORM_FIELDS = ("paraphrased_question", "cloze_question", "cloze_answer", "mc_question", "mc_options", "mc_answer_index",
               "mc_answers")

GENERATIVE = {"original": "prob", "paraphrased": "form_paraphrased_prob", "cloze": "form_cloze_prob"}
COLUMNS = [*GENERATIVE.values(), "form_cloze_value_prob", "form_mc_option_prob", "form_mc_correct"]


@METRICS.register("form_robustness")
@uses(columns=COLUMNS)
def form_robustness(samples, oracle=None, role="model") -> dict[str, float]:
    rows = split_rows(samples, "forget", "form_robustness", COLUMNS)
    missing = rows[COLUMNS].isna().any(axis=1)
    if missing.any():
        raise EvalInputError(
            f"metric 'form_robustness': {int(missing.sum())} of {len(rows)} forget rows have no form scores "
            f"(e.g. {rows.loc[missing, 'id'].iloc[0]!r}): the QA file has no form fields. prepare_data writes "
            f"them on every generated row ({', '.join(FORM_FIELDS)}); real TOFU files have none, so leave "
            "form_robustness out of evaluate.metrics for them")
    out = {f"form_{form}_forget_prob": float(rows[col].astype(float).mean()) for form, col in GENERATIVE.items()}
    out["form_cloze_value_forget_prob"] = float(rows["form_cloze_value_prob"].astype(float).mean())
    out["form_mc_forget_option_prob"] = float(rows["form_mc_option_prob"].astype(float).mean())
    out["form_mc_forget_accuracy"] = float(rows["form_mc_correct"].astype(float).mean())
    out["form_worst_forget_prob"] = max(out[f"form_{form}_forget_prob"] for form in GENERATIVE)
    return out
