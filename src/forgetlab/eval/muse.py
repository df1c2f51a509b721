"""A muse study's per-sample table: the model scored on MUSE's own evaluation files (the layout of
forgetlab.data.muse), in the columns of forgetlab.eval.scoring, one split name per MUSE set:

* ``knowmem_forget`` / ``knowmem_retain``: knowmem's forget_qa / retain_qa (qa/forget.jsonl,
  qa/retain.jsonl), scored as any QA row (score_split) with the greedy answer cut at
  open-unlearning's MUSE stop words (STOPWORDS) before its ROUGE-L (``rouge_l_f1``, ``rouge_l_recall``);
* ``verbmem_forget``: verbmem's prompts (verbmem/forget.jsonl): <bos> + the prompt's tokens (at most
  evaluate.max_length), greedily continued for evaluate.verbmem_max_new_tokens tokens;
  ``verbmem_continuation`` is the row's gt, ``verbmem_generated`` the continuation and
  ``verbmem_rouge_l_f1`` their ROUGE-L F1 (open-unlearning's forget_verbmem_ROUGE, rougeL_f1);
* ``privleak_forget`` / ``privleak_holdout``: privleak's texts (privleak/{forget,holdout}.jsonl),
  <bos> + the text's first max_length - 2 tokens + <eos>, every token supervised: the per-token
  columns (``answer_token_logp``, ``_mu``, ``_sigma``, ``_match``), ``answer_nll``, ``prob``; the
  attacks drop the eos (forgetlab.metrics.answer_tokens), so they score exactly the text's tokens.

The metrics find these splits through forgetlab.metrics._muse.split_of. Differences from MUSE:
knowmem asks the question in forgetlab's QA prompt, without MUSE's in-context examples.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pandas as pd

from forgetlab.eval.passes import greedy_continuations, timed, token_stats
from forgetlab.eval.scoring import COLUMNS, pad_id, rouge_l_f1, rouge_l_recall, score_split
from forgetlab.metrics import EvalInputError

STOPWORDS = ("\n\n", "\nQuestion", "Question:")  # open-unlearning's MUSE knowmem generation_args
DEFAULT_MAX_LENGTH = 2048  # MUSE's (open-unlearning's MUSE datasets: max_length 2048)
DEFAULT_VERBMEM_TOKENS = 128  # open-unlearning's forget_verbmem_ROUGE: max_new_tokens 128


def read_set(data_dir: Path, rel: str, fields: tuple[str, ...]) -> list[dict]:
    """The rows of one converted MUSE file; missing, empty or a row without a field is an error."""
    path = Path(data_dir) / rel
    if not path.is_file():
        raise EvalInputError(f"MUSE evaluation file {path} not found (prepare_data of a muse study writes it)")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise EvalInputError(f"MUSE evaluation file {path} is empty")
    for i, r in enumerate(rows):
        missing = [f for f in fields if not str(r.get(f) or "").strip()]
        if missing:
            raise EvalInputError(f"MUSE evaluation file {path}: row {r.get('id', i)!r} has no {missing[0]!r}")
    return rows


def cut_at_stopwords(text: str, stopwords=STOPWORDS) -> str:
    """`text` up to its first stop word (the generation stops there in open-unlearning)."""
    cut = min([text.find(s) for s in stopwords if s in text], default=len(text))
    return text[:cut].strip()


def knowmem_table(model, tokenizer, rows: list[dict], split: str, batch_size: int, max_new_tokens: int) -> pd.DataFrame:
    table = score_split(model, tokenizer, rows, split, batch_size, max_new_tokens, generate=True)
    table["generated"] = [cut_at_stopwords(g) for g in table["generated"]]
    table["rouge_l_f1"] = [rouge_l_f1(g, a) for g, a in zip(table["generated"], table["answer"])]
    table["rouge_l_recall"] = [rouge_l_recall(g, a) for g, a in zip(table["generated"], table["answer"])]
    return table


def empty_record(split: str, row_id, question: str, answer: str) -> dict:
    record = {c: math.nan for c in COLUMNS}
    record.update(split=split, id=row_id, entity_id=None, attribute=None, question=question, answer=answer,
                  generated="", answer_token_logp=None, answer_token_match=None, answer_token_mu=None,
                  answer_token_sigma=None, verbmem_prefix_tokens=None, verbmem_continuation=None,
                  verbmem_generated=None)
    return record


def verbmem_table(model, tokenizer, rows: list[dict], batch_size: int, max_length: int, max_new_tokens: int) -> pd.DataFrame:
    prompts = [[tokenizer.bos_token_id] + tokenizer(r["prompt"], add_special_tokens=False)["input_ids"][:max_length - 1]
               for r in rows]
    new = greedy_continuations(model, prompts, pad_id(tokenizer), tokenizer.eos_token_id, batch_size, max_new_tokens)
    records = []
    for r, p, t in zip(rows, prompts, new):
        gen = tokenizer.decode(t, skip_special_tokens=True).strip()
        record = empty_record("verbmem_forget", r["id"], r["prompt"], r["gt"])
        record.update(verbmem_prefix_tokens=len(p) - 1, verbmem_continuation=r["gt"], verbmem_generated=gen,
                      verbmem_rouge_l_f1=rouge_l_f1(gen, r["gt"]))
        records.append(record)
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def text_example(tokenizer, text: str, max_length: int) -> dict:
    """<bos> + the first max_length - 2 tokens of `text` + <eos>, every token supervised."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length - 2]
    ids = [tokenizer.bos_token_id] + ids + [tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": list(ids)}


def privleak_table(model, tokenizer, rows: list[dict], split: str, batch_size: int, max_length: int) -> pd.DataFrame:
    stats = token_stats(model, [text_example(tokenizer, r["text"], max_length) for r in rows], pad_id(tokenizer),
                        batch_size)
    records = []
    for r, s in zip(rows, stats):
        if len(s.logp) < 2:
            raise EvalInputError(f"split {split!r}, row {r['id']!r}: a text without tokens")
        record = empty_record(split, r["id"], "", r["text"])
        record.update(answer_nll=s.nll, answer_tokens=len(s.logp), prob=math.exp(-s.nll),
                      answer_token_logp=s.logp.tolist(), answer_token_match=s.match.tolist(),
                      answer_token_mu=s.mu.tolist(), answer_token_sigma=s.sigma.tolist(),
                      answer_zlib=len(zlib.compress(r["text"].encode("utf-8"))))
        records.append(record)
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def score_muse(model, tokenizer, data_dir: Path, ev: dict, passes=("generation",), timings: dict | None = None) -> pd.DataFrame:
    """The muse table of `model` (see the module's docstring); the generation sets (knowmem,
    verbmem) are scored only when the "generation" pass is asked for (forgetlab.eval.plan)."""
    bs, max_length = ev["batch_size"], ev.get("max_length", DEFAULT_MAX_LENGTH)
    was_training = model.training
    model.eval()
    frames = []
    try:
        with timed(timings, "logprob"):
            for split in ("forget", "holdout"):
                rows = read_set(data_dir, f"privleak/{split}.jsonl", ("text",))
                frames.append(privleak_table(model, tokenizer, rows, f"privleak_{split}", bs, max_length))
        if "generation" in passes:
            with timed(timings, "generation"):
                for split in ("forget", "retain"):
                    rows = read_set(data_dir, f"qa/{split}.jsonl", ("question", "answer"))
                    frames.append(knowmem_table(model, tokenizer, rows, f"knowmem_{split}", bs, ev["max_new_tokens"]))
                rows = read_set(data_dir, "verbmem/forget.jsonl", ("prompt", "gt"))
                frames.append(verbmem_table(model, tokenizer, rows, bs, max_length,
                                            ev.get("verbmem_max_new_tokens", DEFAULT_VERBMEM_TOKENS)))
    finally:
        model.train(was_training)
    return pd.concat(frames, ignore_index=True)
