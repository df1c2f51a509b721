"""Time to evaluate one model on the default data: forgetlab's batched evaluation against a naive one.

Both evaluate the same model on the same four capped splits of the default data, on one thread,
and compute the same metrics (the config's evaluate.metrics plus every metric of the evaluation
suite, NEW_METRICS) from per-sample tables. The evaluated model, the oracle and the reference
(pretrained) model are checkpoints of the default study (--model-dir, --oracle-dir,
--reference-dir, e.g. results/<study>/finetune/none/seed0/target/model, any other fine-tuned model
and results/<study>/pretrain/model); any of them not given is a randomly initialised default-size
Llama (seeds 0, 1, 2), whose greedy answers are noise, so ROUGE is 0 on both paths and checks little.

- batched: `forgetlab.evaluate.score_model` (one padded likelihood pass, one batched greedy
  decoding, vmapped per-sample gradients), then `compute_metrics`;
- naive: for each metric, for each sample it needs, one forward of batch 1 (or one batch-1
  `generate`, or one forward and backward for GradNorm) computing what that metric reads, as a
  straightforward per-sample, per-metric implementation would; then the same metric function on
  that metric's own table.

The oracle's and the reference (pretrained) model's tables, which some metrics read, are scored
once beforehand by the batched path and shared by both. The
script prints, and writes to benchmarks/results/eval_speed.json, the seconds of each part
(likelihood pass, generation, GradNorm), the speed-up, and the largest absolute difference
between the two paths' metrics (target: >= 5x faster, <= 1e-6 apart).

The relearning attack of relearn_recovery (forgetlab.relearn: evaluate.relearn.steps of
fine-tuning a copy of the model on part of the forget set, then scoring the rest) is timed as a
part of its own, on the batched path only: it is one fine-tuning run whichever way the metrics are
computed, so the naive evaluation has no counterpart to it. It is left out of "total", the
speed-up and the metric comparison, which therefore mean what they meant before.

    python benchmarks/eval_speed.py [--config config/config.yaml] [--split forget10] [--repeats 1]
                                    [--model-dir DIR] [--oracle-dir DIR] [--reference-dir DIR]
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
from forgetlab.evaluate import rouge_l_f1, rouge_l_recall, score_model, verbmem_prompt
from forgetlab.forms import form_pairs
from forgetlab.metrics import compute_metrics
from forgetlab.model import load_model, load_tokenizer, new_llama
from forgetlab.qa import IGNORE, encode_prompt, encode_qa
from forgetlab.recipes.evaluate import RELEARN_METRICS, attach_reference, eval_splits
from forgetlab.relearn import RelearnConfig, relearn_columns

NEW_METRICS = ["world_facts_option_prob", "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus",
               "mia_gradnorm", "mia_reference", "extraction_strength", "exact_memorization", "knowmem",
               "verbmem", "privleak", "privleak_min_k_plus_plus"]
ALL = ("forget", "retain", "holdout", "world_facts")
MIA = ("forget", "holdout")
TR = ("paraphrased_nll", "paraphrased_prob", "perturbed_nll", "perturbed_prob", "truth_ratio", "option_prob")

# metric -> {split: parts it needs}; parts: answer (one forward), tr (paraphrase + perturbed
# forwards), gen (one greedy generation), verbmem (one greedy continuation), grad (forward +
# backward), reference (the reference table's NLL, no model call)
NEEDS = {
    "forget_quality": {"forget": ["tr"]},
    "model_utility": {"retain": ["answer", "tr", "gen"], "world_facts": ["tr", "gen"]},
    "split_means": {s: ["answer", "gen"] for s in ALL},
    "world_facts_option_prob": {"world_facts": ["tr"]},
    **{f"{s}_truth_ratio": {s: ["tr"]} for s in ALL},
    **{f"{s}_prob": {s: ["answer"]} for s in ALL},
    **{f"{s}_rouge": {s: ["gen"]} for s in ALL},
    **{m: {s: ["answer"] for s in MIA} for m in ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus",
                                                 "privleak", "privleak_min_k_plus_plus")},
    "mia_gradnorm": {s: ["grad"] for s in MIA},
    "mia_reference": {s: ["answer", "reference"] for s in MIA},
    "extraction_strength": {"forget": ["answer"]},
    "exact_memorization": {"forget": ["answer"]},
    "knowmem": {"forget": ["gen"], "retain": ["gen"]},
    "verbmem": {"forget": ["verbmem"]},
    "form_robustness": {"forget": ["answer", "forms"]},
}


# ----------------------------------------------------------------------------- the naive path

def one_sequence(model, tok, question: str, answer: str, with_grad: bool = False):
    """One batch-1 forward of prompt + answer: per answer token log p, argmax match, mu, sigma."""
    enc = encode_qa(tok, question, answer)
    ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor(enc["labels"][1:])
    with torch.set_grad_enabled(with_grad):
        logits = model(input_ids=ids).logits[0, :-1]
    sel = labels != IGNORE
    logp_all = torch.log_softmax(logits[sel].float(), -1)
    target = labels[sel]
    logp = logp_all.gather(-1, target[:, None])[:, 0]
    if with_grad:
        return -logp.mean()
    p = logp_all.exp()
    mu = (p * logp_all).sum(-1)
    sigma = (p * (logp_all - mu[:, None]).square()).sum(-1).sqrt()
    return logp.double().numpy(), (logp_all.argmax(-1) == target).numpy(), mu.double().numpy(), sigma.double().numpy()


def nll(model, tok, question, answer) -> float:
    return float(-one_sequence(model, tok, question, answer)[0].mean())


def greedy(model, tok, prompt: list[int], max_new_tokens: int) -> str:
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, temperature=None, top_p=None, top_k=None)
    new = out[0, len(prompt):].tolist()
    new = new[:new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
    return tok.decode(new, skip_special_tokens=True).strip()


def naive_part(part: str, model, tok, r: dict, ref: dict, max_new_tokens: int) -> dict:
    if part == "answer":
        logp, match, mu, sigma = one_sequence(model, tok, r["question"], r["answer"])
        n = float(-logp.mean())
        return {"answer_nll": n, "prob": math.exp(-n), "answer_tokens": len(logp), "answer_token_logp": list(logp),
                "answer_token_match": list(match), "answer_token_mu": list(mu), "answer_token_sigma": list(sigma),
                "answer_zlib": len(zlib.compress(r["answer"].encode("utf-8")))}
    if part == "tr":
        para = nll(model, tok, r["question"], r["paraphrased_answer"])
        pert = [nll(model, tok, r["question"], p) for p in r["perturbed_answer"]]
        pp, qs = math.exp(-para), [math.exp(-x) for x in pert]
        return {"paraphrased_nll": para, "paraphrased_prob": pp, "perturbed_nll": sum(pert) / len(pert),
                "perturbed_prob": sum(qs) / len(qs), "truth_ratio": sum(qs) / len(qs) / pp, "option_prob": pp / (pp + sum(qs))}
    if part == "gen":
        g = greedy(model, tok, encode_prompt(tok, r["question"]), max_new_tokens)
        return {"generated": g, "rouge_l_recall": rouge_l_recall(g, r["answer"]), "rouge_l_f1": rouge_l_f1(g, r["answer"])}
    if part == "verbmem":
        prompt, _, truth = verbmem_prompt(tok, r["question"], r["answer"])
        return {"verbmem_rouge_l_f1": rouge_l_f1(greedy(model, tok, prompt, max_new_tokens), truth)}
    if part == "grad":
        model.zero_grad()
        one_sequence(model, tok, r["question"], r["answer"], with_grad=True).backward()
        norm = torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).mean()
        model.zero_grad()
        return {"grad_norm": float(norm)}
    if part == "forms":  # one forward per form sequence: paraphrase, fill-in-the-blank, each option
        probs = [math.exp(-nll(model, tok, q, a)) for q, a in form_pairs(r)]
        options = probs[2:]
        true = options[r["mc_answer_index"]]
        return {"form_paraphrased_prob": probs[0], "form_cloze_prob": probs[1],
                "form_mc_option_prob": true / sum(options),
                "form_mc_correct": float(all(true > p for k, p in enumerate(options) if k != r["mc_answer_index"]))}
    if part == "reference":
        return {"reference_answer_nll": ref[r["id"]]}
    raise ValueError(part)


KIND = {"answer": "logprob", "tr": "logprob", "reference": "logprob", "forms": "forms", "gen": "generation", "verbmem": "generation",
        "grad": "gradnorm"}


def naive_metrics(names, model, tok, splits, oracle, ref, max_new_tokens, timings) -> dict[str, float]:
    out = {}
    for name in names:
        rows = []
        for split, parts in NEEDS[name].items():
            for r in splits[split]:
                row = {"split": split, "id": r["id"]}
                for part in parts:
                    start = time.perf_counter()
                    row.update(naive_part(part, model, tok, r, ref[split], max_new_tokens))
                    timings[KIND[part]] = timings.get(KIND[part], 0.0) + time.perf_counter() - start
                rows.append(row)
        out.update(compute_metrics([name], pd.DataFrame(rows), oracle))
    return out


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--repeats", type=int, default=1)
    for role in ("model", "oracle", "reference"):
        ap.add_argument(f"--{role}-dir", default=None, help=f"the {role} checkpoint (default: random init)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load(Path(args.config).read_text())
    # relearn_recovery is timed on its own below (no naive counterpart, and it needs the target's table)
    names = [n for n in dict.fromkeys(config["evaluate"]["metrics"] + NEW_METRICS) if n not in RELEARN_METRICS]
    params = stage_params(config, "evaluate", model="target", regularizer=next(iter(config["regularizers"])),
                          seed=0, split=args.split)
    ev = params["evaluate"]
    with tempfile.TemporaryDirectory() as tmp:
        prepare_data(config["data"], Path(tmp) / "data")
        tok = load_tokenizer(Path(tmp) / "data" / "tokenizer")
        splits = eval_splits(params, Path(tmp) / "data")
    if args.model_dir and load_tokenizer(args.model_dir).get_vocab() != tok.get_vocab():
        raise SystemExit(f"{args.model_dir} was trained with another tokenizer than {args.config}'s data")
    models = []
    for seed, path in enumerate((args.model_dir, args.oracle_dir, args.reference_dir)):
        torch.manual_seed(seed)
        models.append((load_model(path) if path else new_llama(config["model"], tok)).eval())
    model, oracle_model, ref_model = models
    reference = score_model(ref_model, tok, splits, ev["batch_size"], ev["max_new_tokens"], (), ())
    oracle = attach_reference(score_model(oracle_model, tok, splits, ev["batch_size"], ev["max_new_tokens"]),
                              reference, "reference")
    ref = {s: dict(zip(g["id"], g["answer_nll"])) for s, g in reference.groupby("split")}

    relearn_cfg = RelearnConfig(**ev.get("relearn", {}))
    runs = []
    for _ in range(args.repeats):
        bt: dict[str, float] = {}
        start = time.perf_counter()
        samples = score_model(model, tok, splits, ev["batch_size"], ev["max_new_tokens"], timings=bt)
        samples = attach_reference(samples, reference, "reference")
        batched = compute_metrics(names, samples, oracle)
        bt["total"] = time.perf_counter() - start
        nt: dict[str, float] = {}
        start = time.perf_counter()
        naive = naive_metrics(names, model, tok, splits, oracle, ref, ev["max_new_tokens"], nt)
        nt["total"] = time.perf_counter() - start
        relearn_columns(model, tok, splits["forget"], relearn_cfg, params["seed_data"], batch_size=ev["batch_size"],
                        max_new_tokens=ev["max_new_tokens"], timings=bt)
        runs.append((bt, nt, batched, naive))
    bt = {k: min(r[0][k] for r in runs) for k in runs[0][0]}
    nt = {k: min(r[1][k] for r in runs) for k in runs[0][1]}
    batched, naive = runs[-1][2], runs[-1][3]
    assert batched.keys() == naive.keys(), set(batched) ^ set(naive)
    diff = {k: abs(batched[k] - naive[k]) for k in batched}
    result = {
        "date": datetime.date.today().isoformat(), "config": args.config, "split": args.split, "threads": 1,
        "models": {"model": args.model_dir, "oracle": args.oracle_dir, "reference": args.reference_dir},
        "repeats": args.repeats, "rows": {s: len(r) for s, r in splits.items()},
        "sequences_scored": int(sum(1 + 1 + len(r["perturbed_answer"]) for rs in splits.values() for r in rs)),
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
    out = Path("benchmarks/results/eval_speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
