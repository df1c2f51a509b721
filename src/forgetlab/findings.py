"""The study's findings, written from the paired tests (never by hand): findings.md and findings.html.

One sentence per comparison (a regularizer against the baseline) and headline metric, every number
taken from its row of paired_tests.csv and printed to 3 significant digits:

    dropout vs none: log10 forget quality after unlearning +1.3 [0.4, 2.1], Holm p = 0.03, n = 6 pairs of path x split x seed means (12 model pairs)

(the mean paired difference on the tested scale, its 95% CI, the Holm-corrected p-value and the
number of pairs: of independent units' means, a unit's methods averaged, when the tests have
units). Significant findings (Holm p <= alpha) come first, then the others; the A/A control (family "aa_control" of the tests) has its own section, always present: its lines, a
**A/A control FAILED** line (red in the HTML) when any of its tests is significant, or a line
saying that the study ran no A/A control. A forget-quality test leaves out the pairs with a
collapsed model (forgetlab.stats.paired_tests' `exclude`); its sentence says how many.

The compared factor is a column of the tests table (`factor`, "regularizer" by default). With
training paths the report also passes path_tests.csv (`paths`): each path against the reference
path, over all regularizers and per regularizer, one sentence per metric in the same sections, e.g.

    world_authors vs authors_world (all regularizers): steps to the oracle's forget prob. +14 [11, 16], Holm p = 0.004, n = 3 pairs of split x seed means (18 model pairs)
"""

from __future__ import annotations

import html

import pandas as pd

from forgetlab.stats import AA_FAMILY, ALPHA

# headline metric of the paired tests -> how a sentence names it (on its tested scale)
LABELS = {
    "forget_quality": "log10 forget quality after unlearning",
    "model_utility": "model utility after unlearning",
    "matched_forget_quality": "log10 forget quality at the oracle's forget prob. (matched)",
    "matched_model_utility_lik": "model utility without ROUGE at the oracle's forget prob. (matched)",
    "model_utility_value": "model utility on the value after unlearning",
    "matched_model_utility_value_lik": "model utility on the value without ROUGE at the oracle's forget prob. (matched)",
    "steps_to_threshold": "steps to the oracle's forget prob.",
    "relearn_recovery": "relearning recovery",
}
FAILED = "**A/A control FAILED**"
NOT_RUN = ("The A/A control was not run: the study has no entry that differs from the baseline by its "
           "data_order_seed alone.")


def number(value: float, sign: bool = False) -> str:
    """3 significant digits ("+1.3", "0.0312", "-2.5e-05"); the precision findings are checked to."""
    return f"{value:+.3g}" if sign else f"{value:.3g}"


def sentence(row: dict, factor: str = "regularizer") -> str:
    scope = f" ({row['scope']})" if isinstance(row.get("scope"), str) else ""
    text = (f"{row[factor]} vs {row['baseline']}{scope}: {LABELS.get(row['metric'], row['metric'])} "
            f"{number(row['mean_diff'], sign=True)} [{number(row['diff_ci_low'])}, {number(row['diff_ci_high'])}], "
            f"Holm p = {number(row['p_holm'])}, n = {int(row['n_pairs'])} pairs")
    if isinstance(row.get("unit"), str) and row["unit"] != "pair":  # the pairs are units' means (stats.paired_tests)
        text += f" of {row['unit']} means ({int(row['n_model_pairs'])} model pairs)"
    if row.get("n_excluded"):
        text += f" ({int(row['n_excluded'])} pair(s) with a collapsed model left out)"
    if not row["testable"]:
        text += " (not testable)"
    return text


def path_rows(paths: pd.DataFrame, factor: str) -> pd.DataFrame:
    """path_tests' rows in the regularizer tests' shape: the path as `factor`, the reference path as
    the baseline, and the regularizers it pools (or the one it is of) as the sentence's scope."""
    rows = paths.rename(columns={"reference_path": "baseline"}).drop(columns=[factor], errors="ignore")
    scope = paths["regularizer"].map(lambda r: "all regularizers" if r == "all" else r)
    return rows.assign(**{factor: paths["path"], "scope": scope})


def sections(tests: pd.DataFrame, factor: str = "regularizer", alpha: float = ALPHA,
             paths: pd.DataFrame | None = None) -> dict[str, list[str]]:
    """{section title: its lines}: significant (smallest Holm p first), not significant, the A/A
    control; otherwise the rows keep the tests table's order (factor level, then metric), the
    training paths' tests (`paths`, path_tests.csv) after the regularizers'."""
    if paths is not None and len(paths):
        tests = pd.concat([tests, path_rows(paths, factor)], ignore_index=True)
    known = tests[tests["metric"].isin(LABELS)]
    aa = known[known["family"] == AA_FAMILY]
    main = known[known["family"] != AA_FAMILY]
    significant = main["testable"].astype(bool) & (main["p_holm"] <= alpha)
    ranked = main[significant].sort_values("p_holm", kind="stable")
    out = {f"Significant (Holm p <= {alpha})": [sentence(r, factor) for r in ranked.to_dict("records")],
           "Not significant": [sentence(r, factor) for r in main[~significant].to_dict("records")]}
    aa_lines = [sentence(r, factor) for r in aa.to_dict("records")]
    failed = aa[aa["testable"].astype(bool) & (aa["p_holm"] <= alpha)]
    if len(failed):
        aa_lines.insert(0, f"{FAILED}: an A/A test below has Holm p <= {alpha}, so differences this large "
                           "can come from the data order alone")
    out["A/A control"] = aa_lines or [NOT_RUN]
    return out


def aa_failed(lines: dict[str, list[str]]) -> bool:
    return any(line.startswith(FAILED) for line in lines["A/A control"])


def markdown(study: str, lines: dict[str, list[str]]) -> str:
    head = [f"# Findings of study {study}", "",
            "Written by `forgetlab report` from paired_tests.csv: the mean paired difference (regularizer "
            "minus baseline, on the tested scale) [95% CI], the Holm-corrected p-value, and the number of "
            "pairs: with training paths or several methods, of independent units' means (a unit's methods "
            "averaged; docs/metrics.md).", ""]
    if aa_failed(lines):
        head += [f'<span style="color: red">{FAILED}: see the A/A control below.</span>', ""]
    body = []
    for title, items in lines.items():
        body += [f"## {title}", ""] + [f"- {item}" for item in items or ["(none)"]] + [""]
    return "\n".join(head + body)


def to_html(study: str, lines: dict[str, list[str]]) -> str:
    """The same lines as a small HTML page (the section of `snakemake --report`)."""
    def item(text: str) -> str:
        if text.startswith(FAILED):
            rest = html.escape(text[len(FAILED):])
            return f'<li><span style="color: red"><b>A/A control FAILED</b>{rest}</span></li>'
        return f"<li>{html.escape(text)}</li>"

    parts = [f"<html><body><h1>Findings of study {html.escape(study)}</h1>"]
    if aa_failed(lines):
        parts.append('<p><span style="color: red"><b>A/A control FAILED</b>: see the A/A control below.</span></p>')
    for title, items in lines.items():
        parts.append(f"<h2>{html.escape(title)}</h2><ul>{''.join(item(t) for t in items or ['(none)'])}</ul>")
    return "\n".join(parts + ["</body></html>"]) + "\n"
