"""Time to evaluate one model on the default data: forgetlab's batched evaluation against a naive one.

Both evaluate the same model on the same five capped splits of the default data (forget, retain,
holdout, world_facts, real_authors), on one thread, and compute the same metrics (the config's
evaluate.metrics plus every metric of the evaluation suite, SUITE) from per-sample tables. The
evaluated model and the oracle are checkpoints of the default study (--model-dir, --oracle-dir,
e.g. results/<study>/finetune/none/seed0/target/model and .../finetune/none/seed0/forget10/oracle/model);
either not given is a randomly initialised default-size Llama (seeds 0, 1), whose greedy answers
are noise, so ROUGE is 0 on both paths and checks little. The data is prepared from the config's
data section in a temporary folder, or read from an already prepared --data folder (data/<study>).

- batched: `forgetlab.eval.scoring.score_model` (one padded likelihood pass, one batched greedy
  decoding, vmapped per-sample gradients), then `compute_metrics`;
- naive: for each metric, for each sample it needs, one forward of batch 1 per sequence the
  metric reads (the answer, the paraphrase, each perturbed answer, each probe form), one batch-1
  `generate`, or one forward and backward for GradNorm, as a straightforward per-sample,
  per-metric implementation would; then the same metric function on that metric's own table.
  Its per-sample values follow `forgetlab.eval.scoring`: the truth ratio is the geometric mean over the
  perturbed answers against the paraphrase on forget/retain/holdout and the answer itself on
  world_facts/real_authors (ANSWER_IS_CORRECT; ``truth_ratio_para``: the paraphrase everywhere);
  the token-level metrics drop the eos (in the metric functions); GradNorm runs in train mode
  without the eos. (vmap draws its own dropout masks, so GradNorm agrees only for models without
  dropout, which every forgetlab checkpoint is: the dropout regularizer removes itself.)

The oracle's table, which forget_quality, privleak and mia_reference (the oracle is its reference
model, as in open-unlearning) read, is scored once beforehand by the batched path and shared by
both. The script prints, and writes to --out (benchmarks/results/eval_speed.json), the seconds of
each part (likelihood pass, generation, GradNorm, forms), the speed-up, and the largest absolute
difference between the two paths' metrics (target: >= 5x faster, <= 1e-6 apart).

The relearning attack of relearn_recovery (forgetlab.eval.relearn: evaluate.relearn.steps of
fine-tuning a copy of the model on part of the forget set, then scoring the rest) is timed as a
part of its own, on the batched path only: it is one fine-tuning run whichever way the metrics are
computed, so the naive evaluation has no counterpart to it. It is left out of "total", the
speed-up and the metric comparison.

    python benchmarks/eval_speed.py [--config config/config.yaml] [--data DIR] [--split forget10]
                                    [--repeats 1] [--model-dir DIR] [--oracle-dir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import tempfile
import time
import zlib
from pathlib import Path

import pandas as pd
import torch
import yaml

from forgetlab.config import stage_params
from forgetlab.data import prepare_data
from forgetlab.eval.forms import form_pairs, form_scores
from forgetlab.eval.passes import TokenStats, device_of, supervised_stats, without_last_label
from forgetlab.eval.plan import RELEARN, passes_for
from forgetlab.eval.relearn import RelearnConfig, relearn_columns
from forgetlab.eval.scoring import (ANSWER_IS_CORRECT, MIA_SPLITS, ratio_exp, rouge_l_f1, rouge_l_recall, score_model,
                                verbmem_prompt)
from forgetlab.metrics import compute_metrics
from forgetlab.model import load_model, load_tokenizer, new_llama
from forgetlab.qa import IGNORE, encode_prompt, encode_qa
from forgetlab.recipes.evaluate import eval_splits

SPLITS = ("forget", "retain", "holdout", "world_facts", "real_authors")
SUITE = ["forget_quality", "model_utility", "split_means", *(f"{s}_truth_ratio" for s in SPLITS),
         "world_facts_option_prob", "real_authors_option_prob", "world_facts_option_prob_para",
         "real_authors_option_prob_para", "world_facts_truth_ratio_para", "real_authors_truth_ratio_para",
         "model_utility_para", "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm",
         "mia_reference", "extraction_strength", "exact_memorization", "knowmem", "verbmem", "privleak",
         "privleak_min_k_plus_plus", "form_robustness"]


def tr(split: str) -> list[str]:
    """The forwards of a split's truth ratio: the correct answer's and the perturbed answers'."""
    return ["answer", "pert"] if split in ANSWER_IS_CORRECT else ["para", "pert"]


# metric -> {split: parts it needs}; parts: answer (one forward), para (one forward of the
# paraphrase), pert (one forward per perturbed answer), gen (one greedy generation), verbmem (one
# greedy continuation), grad (forward + backward), forms (one forward per probe-form sequence)
NEEDS = {
    "forget_quality": {"forget": tr("forget")},
    "model_utility": {"retain": ["answer", *tr("retain"), "gen"],
                      **{s: ["answer", "pert", "gen"] for s in ANSWER_IS_CORRECT}},
    "model_utility_para": {"retain": ["answer", *tr("retain"), "gen"],
                           **{s: ["para", "pert", "gen"] for s in ANSWER_IS_CORRECT}},
    "model_utility_lik": {"retain": ["answer", *tr("retain")], **{s: ["answer", "pert"] for s in ANSWER_IS_CORRECT}},
    "split_means": {s: ["answer", "gen"] for s in SPLITS},
    **{f"{s}_truth_ratio": {s: tr(s)} for s in SPLITS},
    **{f"{s}_truth_ratio_para": {s: ["para", "pert"]} for s in ANSWER_IS_CORRECT},
    **{f"{s}_option_prob": {s: ["answer", "pert"]} for s in ANSWER_IS_CORRECT},
    **{f"{s}_option_prob_para": {s: ["para", "pert"]} for s in ANSWER_IS_CORRECT},
    **{f"{s}_option_accuracy": {s: ["para", "pert"]} for s in ANSWER_IS_CORRECT},
    **{f"{s}_prob": {s: ["answer"]} for s in SPLITS},
    **{f"{s}_rouge": {s: ["gen"]} for s in SPLITS},
    **{m: {s: ["answer"] for s in MIA_SPLITS} for m in ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus",
                                                        "mia_reference", "privleak", "privleak_min_k_plus_plus")},
    "mia_gradnorm": {s: ["grad"] for s in MIA_SPLITS},
    "extraction_strength": {"forget": ["answer"]},
    "exact_memorization": {"forget": ["answer"]},
    "knowmem": {"forget": ["gen"], "retain": ["gen"]},
    "verbmem": {"forget": ["verbmem"]},
    "form_robustness": {"forget": ["answer", "forms"]},
}
KIND = {"answer": "logprob", "para": "logprob", "pert": "logprob", "forms": "forms", "gen": "generation",
        "verbmem": "generation", "grad": "gradnorm"}


# ----------------------------------------------------------------------------- the naive path

def one_sequence(model, tok, question: str, answer: str) -> TokenStats:
    """One batch-1 forward of prompt + answer: per answer token (eos included) log p, argmax match, mu, sigma."""
    enc, dev = encode_qa(tok, question, answer), device_of(model)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc["input_ids"]], device=dev)).logits
    logp, match, mu, sigma, _ = supervised_stats(logits, torch.tensor([enc["labels"]], device=dev))
    return TokenStats(*(t.cpu().numpy() for t in (logp.double(), match, mu.double(), sigma.double())))


def grad_norm(model, tok, question: str, answer: str) -> float:
    """GradNorm of one answer: one batch-1 forward and backward in train mode, the eos unsupervised,
    mean over the parameter tensors of the gradient's 2-norm."""
    enc, dev = without_last_label(encode_qa(tok, question, answer)), device_of(model)
    labels = torch.tensor(enc["labels"][1:], device=dev)
    sel = labels != IGNORE
    model.train()
    model.zero_grad()
    try:
        logits = model(input_ids=torch.tensor([enc["input_ids"]], device=dev)).logits[0, :-1]
        (-torch.log_softmax(logits[sel].float(), -1).gather(-1, labels[sel][:, None]).mean()).backward()
        return float(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).mean())
    finally:
        model.zero_grad()
        model.eval()


def greedy(model, tok, prompt: list[int], max_new_tokens: int) -> str:
    dev = device_of(model)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt], device=dev),
                             attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=dev),
                             do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, temperature=None, top_p=None, top_k=None)
    new = out[0, len(prompt):].tolist()
    new = new[:new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
    return tok.decode(new, skip_special_tokens=True).strip()


def naive_part(part: str, model, tok, r: dict, max_new_tokens: int) -> dict:
    q = r["question"]
    if part == "answer":
        s = one_sequence(model, tok, q, r["answer"])
        return {"answer_nll": s.nll, "prob": math.exp(-s.nll), "answer_tokens": len(s.logp),
                "answer_token_logp": list(s.logp), "answer_token_match": list(s.match),
                "answer_token_mu": list(s.mu), "answer_token_sigma": list(s.sigma),
                "answer_zlib": len(zlib.compress(r["answer"].encode("utf-8")))}
    if part == "para":
        n = one_sequence(model, tok, q, r["paraphrased_answer"]).nll
        return {"paraphrased_nll": n, "paraphrased_prob": math.exp(-n)}
    if part == "pert":
        nlls = [one_sequence(model, tok, q, p).nll for p in r["perturbed_answer"]]
        probs = [math.exp(-x) for x in nlls]
        return {"perturbed_nll": sum(nlls) / len(nlls), "perturbed_prob": sum(probs) / len(probs),
                "_pert_probs": probs}
    if part == "gen":
        g = greedy(model, tok, encode_prompt(tok, q), max_new_tokens)
        return {"generated": g, "rouge_l_recall": rouge_l_recall(g, r["answer"]), "rouge_l_f1": rouge_l_f1(g, r["answer"])}
    if part == "verbmem":
        prompt, _, truth = verbmem_prompt(tok, q, r["answer"])
        return {"verbmem_rouge_l_f1": rouge_l_f1(greedy(model, tok, prompt, max_new_tokens), truth)}
    if part == "grad":
        return {"grad_norm": grad_norm(model, tok, q, r["answer"])}
    if part == "forms":
        return form_scores(r, [one_sequence(model, tok, fq, fa) for fq, fa in form_pairs(r)])
    raise ValueError(part)


def ratios(row: dict, split: str) -> dict:
    """The truth ratios and option probabilities that the row's forwards allow (see forgetlab.eval.scoring)."""
    if "_pert_probs" not in row:
        return {}
    probs, pert, out = row.pop("_pert_probs"), row["perturbed_nll"], {}
    correct = "answer_nll" if split in ANSWER_IS_CORRECT else "paraphrased_nll"
    if correct in row:
        out["truth_ratio"] = ratio_exp(row[correct] - pert)
    if "paraphrased_nll" in row:
        out["truth_ratio_para"] = ratio_exp(row["paraphrased_nll"] - pert)
        out["option_prob_para"] = row["paraphrased_prob"] / (row["paraphrased_prob"] + sum(probs))
        out["option_correct_para"] = float(row["paraphrased_prob"] > max(probs))
    if "answer_nll" in row:
        out["option_prob"] = row["prob"] / (row["prob"] + sum(probs))
    return out


def naive_metrics(names, model, tok, splits, oracle, max_new_tokens, timings) -> dict[str, float]:
    out = {}
    for name in names:
        rows = []
        for split, parts in NEEDS[name].items():
            for r in splits[split]:
                row = {"split": split, "id": r["id"]}
                for part in parts:
                    start = time.perf_counter()
                    row.update(naive_part(part, model, tok, r, max_new_tokens))
                    timings[KIND[part]] = timings.get(KIND[part], 0.0) + time.perf_counter() - start
                row.update(ratios(row, split))
                rows.append(row)
        out.update(compute_metrics([name], pd.DataFrame(rows), oracle))
    return out


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--data", default=None, help="a prepared data folder of the config (data/<study>); default: "
                                                 "prepared from the config's data section in a temporary folder")
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--repeats", type=int, default=1)
    for role in ("model", "oracle"):
        ap.add_argument(f"--{role}-dir", default=None, help=f"the {role} checkpoint (default: random init)")
    ap.add_argument("--out", default="benchmarks/results/eval_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(Path(args.config).read_text())
    # relearn_recovery is timed on its own below (no naive counterpart, and it needs the target's table)
    names = [n for n in dict.fromkeys(config["evaluate"]["metrics"] + SUITE) if RELEARN not in passes_for([n])]
    if unknown := [n for n in names if n not in NEEDS]:
        raise SystemExit(f"no naive counterpart for metric(s) {', '.join(unknown)}: add them to NEEDS")
    path = {"path": next(iter(config["paths"]))} if config.get("paths") else {}  # a study with training paths
    params = stage_params(config, "evaluate", model="target", regularizer=next(iter(config["regularizers"])),
                          seed=0, split=args.split, **path)
    ev, seed = params["evaluate"], params["seed_data"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            prepare_data(config["data"], data)
        tok = load_tokenizer(data / "tokenizer")
        splits = eval_splits(params, data)
    if args.model_dir and load_tokenizer(args.model_dir).get_vocab() != tok.get_vocab():
        raise SystemExit(f"{args.model_dir} was trained with another tokenizer than {args.data or args.config}'s data")
    models = []
    for i, path in enumerate((args.model_dir, args.oracle_dir)):
        torch.manual_seed(i)
        models.append((load_model(path) if path else new_llama(config["model"], tok)).eval())
    model, oracle_model = models
    oracle = score_model(oracle_model, tok, splits, ev["batch_size"], ev["max_new_tokens"], seed=seed)

    relearn_cfg = RelearnConfig(**ev.get("relearn", {}))
    runs = []
    for _ in range(args.repeats):
        bt: dict[str, float] = {}
        start = time.perf_counter()
        samples = score_model(model, tok, splits, ev["batch_size"], ev["max_new_tokens"], timings=bt, seed=seed)
        batched = compute_metrics(names, samples, oracle)
        bt["total"] = time.perf_counter() - start
        nt: dict[str, float] = {}
        start = time.perf_counter()
        naive = naive_metrics(names, model, tok, splits, oracle, ev["max_new_tokens"], nt)
        nt["total"] = time.perf_counter() - start
        relearn_columns(model, tok, splits["forget"], relearn_cfg, seed, batch_size=ev["batch_size"],
                        max_new_tokens=ev["max_new_tokens"], timings=bt)
        runs.append((bt, nt, batched, naive))
    bt = {k: min(r[0][k] for r in runs) for k in runs[0][0]}
    nt = {k: min(r[1][k] for r in runs) for k in runs[0][1]}
    batched, naive = runs[-1][2], runs[-1][3]
    assert batched.keys() == naive.keys(), set(batched) ^ set(naive)
    diff = {k: abs(batched[k] - naive[k]) for k in batched}
    result = {
        "date": datetime.date.today().isoformat(), "config": args.config, "data": args.data, "split": args.split,
        "threads": 1, "models": {"model": args.model_dir, "oracle": args.oracle_dir},
        "repeats": args.repeats, "rows": {s: len(r) for s, r in splits.items()},
        "sequences_scored": int(sum(1 + bool(r.get("paraphrased_answer")) + len(r.get("perturbed_answer") or [])
                                    for rs in splits.values() for r in rs)),
        "metrics": len(batched),
        "batched_s": {k: round(v, 2) for k, v in bt.items()},
        "naive_s": {k: round(v, 2) for k, v in nt.items()},
        "speedup": {k: round(nt[k] / bt[k], 1) for k in bt if k in nt},
        "relearn": {"seconds": round(bt["relearn"], 2), **vars(relearn_cfg),
                    "note": "batched path only, not in total or speedup: the naive evaluation needs no relearning "
                            "counterpart (relearning is one fine-tuning run either way)"},
        "max_abs_diff": float(max(diff.values())),
        "worst_metric": max(diff, key=diff.get),
        "metrics_batched": {k: round(v, 6) for k, v in sorted(batched.items())},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
