"""The TOFU source (`data.source: tofu`): the published TOFU files of a local directory, checked and
converted to forgetlab's QA layout (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for
LLMs"; the files of the Hugging Face dataset locuslab/TOFU, as open-unlearning reads them).

`data.path` holds one file per published subset, `<name>.json` (JSON lines, one object per line, as
published), `<name>.jsonl`, `<name>.parquet` or `<name>/*.parquet`:

* forget01/05/10, retain99/95/90, real_authors, world_facts: question, answer;
* forget01/05/10_perturbed, retain_perturbed: question, answer, paraphrased_answer and
  perturbed_answer (a list), with paraphrased_question kept where present;
* real_authors_perturbed, world_facts_perturbed: question, answer, perturbed_answer;
* holdout01/05/10: question, answer; holdout01/05/10_perturbed are optional (merged when present).

Checks, each error naming the file (and the field): a missing file or field, an empty file, a
perturbed_answer that is not a non-empty list of strings; forgetXX must be XX% of forgetXX +
retain(100-XX) (rounded to a row), each forget/retain pair disjoint, and the three pairs the same
rows; a _perturbed file must hold its base file's rows; retain_perturbed must lie in retain90;
holdoutXX must be as large as forgetXX and share no question with the forget/retain rows.

Written (the synthetic source's layout): qa/forget01|05|10, qa/retain99|95|90, qa/full (retain90
then forget10), qa/world_facts and qa/real_authors (the _perturbed files), qa/holdout01|05|10 and
qa/holdout (holdout10), qa/retain_eval (retain_perturbed, TOFU's retain evaluation set);
corpus.jsonl (empty: TOFU has no pretraining text); tokenizer/ (model.init_from's tokenizer); and
manifest.json with the sha256 of every file read and written. A forget row carries its
_perturbed fields, so the forget split is scored as open-unlearning scores forgetXX and
forgetXX_perturbed. Rows get ids from their question and answer (the same row has the same id in
every split); TOFU publishes no author ids or attributes, so entity_id and attribute are None.

The evaluation reads retain_eval for the retain role and holdoutXX for the holdout role of split
forgetXX (`eval_files`), as open-unlearning's TOFU evaluation does. `unsupported_metrics` names the
metrics that need fields TOFU does not publish; the config check refuses them.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from forgetlab.splits import FORGET_SPLITS, RETAIN_OF, forget_size

QA_FIELDS = ("question", "answer")
PERTURBED_FIELDS = (*QA_FIELDS, "paraphrased_answer", "perturbed_answer")
OPTIONAL_FIELDS = ("paraphrased_question",)
OPTION_FIELDS = (*QA_FIELDS, "perturbed_answer")  # real_authors / world_facts: the options of option_prob
HOLDOUTS = {split: f"holdout{split[-2:]}" for split in FORGET_SPLITS}
EXTENSIONS = (".json", ".jsonl", ".parquet")
# metrics that need what TOFU does not publish, with the reason the config check gives
UNSUPPORTED = {
    "form_robustness": "needs the cloze and multiple-choice forms (cloze_question, mc_options, ...) of the "
                       "synthetic world, which TOFU does not publish",
    "model_utility_para": "is forgetlab's variant for the synthetic world's template-matched paraphrases; "
                          "TOFU's model utility is model_utility",
    **{f"{s}_{m}_para": "needs a paraphrased answer of the real_authors/world_facts questions in the perturbed "
                        "answers' wording, which TOFU does not publish (use " + f"{s}_{m})"
       for s in ("real_authors", "world_facts") for m in ("option_prob", "truth_ratio")},
}
HOLDOUT_TRUTH_RATIO = ("holdout_truth_ratio: needs the holdout's paraphrased and perturbed answers "
                       "(holdout01/05/10_perturbed), which data.path does not have")


class TofuDataError(ValueError):
    """A TOFU input file that cannot be used; the message names the file (and the field)."""


def source_file(root: Path, name: str) -> Path | None:
    """The file of subset `name` under `root` (see the module docstring), or None."""
    for ext in EXTENSIONS:
        if (root / f"{name}{ext}").is_file():
            return root / f"{name}{ext}"
    shards = sorted((root / name).glob("*.parquet")) if (root / name).is_dir() else []
    return shards[0].parent if shards else None


def _plain(value):
    """A parquet cell as JSON would hold it (numpy arrays to lists)."""
    return [_plain(v) for v in value] if hasattr(value, "tolist") and not isinstance(value, str) else value


def read_rows(path: Path) -> list[dict]:
    if path.is_dir() or path.suffix == ".parquet":
        import pandas as pd

        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TofuDataError(f"TOFU file {path}: line {n} is not a JSON object ({e.msg}); the published "
                                    ".json files hold one object per line") from None
    return rows


def check_fields(rows: list[dict], path: Path, fields) -> None:
    if not rows:
        raise TofuDataError(f"TOFU file {path} is empty")
    for i, row in enumerate(rows):
        for field in fields:
            value = row.get(field) if isinstance(row, dict) else None
            if field == "perturbed_answer":
                if not (isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value)):
                    raise TofuDataError(f"TOFU file {path}, row {i}: field {field!r} must be a non-empty list of "
                                        f"non-empty strings, got {value!r}")
            elif not (isinstance(value, str) and value.strip()):
                raise TofuDataError(f"TOFU file {path}, row {i}: missing or empty field {field!r}")


def key(row: dict) -> tuple[str, str]:
    return row["question"], row["answer"]


class Reader:
    """Reads the subsets of one directory, checking fields and recording each file's sha256."""

    def __init__(self, root: Path):
        self.root, self.sha256 = root, {}

    def __call__(self, name: str, fields, required: bool = True) -> tuple[list[dict] | None, Path | None]:
        path = source_file(self.root, name)
        if path is None:
            if required:
                raise TofuDataError(f"TOFU file {self.root / (name + '.json')} not found (nor .jsonl, .parquet "
                                    f"or {name}/*.parquet): data.path must hold TOFU's published files")
            return None, None
        for f in sorted(path.glob("*.parquet")) if path.is_dir() else [path]:
            self.sha256[str(f.relative_to(self.root))] = hashlib.sha256(f.read_bytes()).hexdigest()
        rows = read_rows(path)
        check_fields(rows, path, fields)
        return [{f: row[f] for f in (*fields, *OPTIONAL_FIELDS) if row.get(f) is not None} for row in rows], path


def merge_perturbed(base: list[dict], base_path: Path, perturbed: list[dict], path: Path) -> list[dict]:
    """The base rows with the fields of their _perturbed rows (matched by question and answer)."""
    extra = {key(r): r for r in perturbed}
    missing = [r for r in base if key(r) not in extra]
    if missing:
        raise TofuDataError(f"TOFU file {path}: must hold every row of {base_path} (same question and answer); "
                            f"{len(missing)} missing, e.g. {missing[0]['question']!r}")
    if len(perturbed) != len(base):
        raise TofuDataError(f"TOFU file {path}: {len(perturbed)} rows, but {base_path} has {len(base)}")
    return [{**r, **extra[key(r)]} for r in base]


def with_ids(rows: list[dict], prefix: str) -> list[dict]:
    """Each row with an id from its question and answer (a repeat within the file gets a suffix)."""
    seen: Counter = Counter()
    out = []
    for r in rows:
        digest = hashlib.sha256("\0".join(key(r)).encode("utf-8")).hexdigest()[:12]
        n = seen[digest]
        seen[digest] += 1
        out.append({"id": f"{prefix}-{digest}" + (f"-{n}" if n else ""), "entity_id": None, "attribute": None, **r})
    return out


def check_pairs(forget: dict, retain: dict, paths: dict) -> None:
    """Sizes against the names, disjoint pairs, and the same rows in every pair."""
    totals = {}
    for split, pct in FORGET_SPLITS.items():
        r_split = RETAIN_OF[split]
        n = len(forget[split]) + len(retain[r_split])
        want = forget_size(pct, n)
        if len(forget[split]) != want:
            raise TofuDataError(f"TOFU file {paths[split]}: {len(forget[split])} rows, but {split} must be {pct:.0%} of "
                                f"{split} + {r_split} ({n} rows), i.e. {want} (is {paths[r_split]} the matching retain set?)")
        both = {key(r) for r in forget[split]} & {key(r) for r in retain[r_split]}
        if both:
            raise TofuDataError(f"TOFU files {paths[split]} and {paths[r_split]} share {len(both)} row(s), e.g. "
                                f"{next(iter(both))[0]!r}: a forget set and its retain set must be disjoint")
        totals[split] = sorted(key(r) for r in forget[split] + retain[r_split])
    first = next(iter(FORGET_SPLITS))
    for split in FORGET_SPLITS:
        if totals[split] != totals[first]:
            raise TofuDataError(f"TOFU files {paths[split]} + {paths[RETAIN_OF[split]]} do not hold the same rows as "
                                f"{paths[first]} + {paths[RETAIN_OF[first]]}: the three forget/retain pairs must "
                                "split the same authors")


def read_tofu(root: Path) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """The checked QA splits (without ids) and the sha256 of every file read."""
    read = Reader(root)
    forget, retain, paths, splits = {}, {}, {}, {}
    for split in FORGET_SPLITS:
        base, paths[split] = read(split, QA_FIELDS)
        perturbed, p_path = read(f"{split}_perturbed", PERTURBED_FIELDS)
        forget[split] = merge_perturbed(base, paths[split], perturbed, p_path)
        retain[RETAIN_OF[split]], paths[RETAIN_OF[split]] = read(RETAIN_OF[split], QA_FIELDS)
    check_pairs(forget, retain, paths)
    retain_eval, r_path = read("retain_perturbed", PERTURBED_FIELDS)
    largest = max(FORGET_SPLITS, key=FORGET_SPLITS.get)
    outside = [r for r in retain_eval if key(r) not in {key(x) for x in retain[RETAIN_OF[largest]]}]
    if outside:
        raise TofuDataError(f"TOFU file {r_path}: {len(outside)} row(s) not in {paths[RETAIN_OF[largest]]}, e.g. "
                            f"{outside[0]['question']!r}: the retain evaluation set must be retained by every split")
    authors = {r["question"] for r in forget[largest] + retain[RETAIN_OF[largest]]}
    for split, name in HOLDOUTS.items():
        rows, path = read(name, QA_FIELDS)
        perturbed, p_path = read(f"{name}_perturbed", PERTURBED_FIELDS, required=False)
        if perturbed is not None:
            rows = merge_perturbed(rows, path, perturbed, p_path)
        if len(rows) != len(forget[split]):
            raise TofuDataError(f"TOFU file {path}: {len(rows)} rows, but {name} must be as large as {split} "
                                f"({len(forget[split])} rows), its membership-inference counterpart")
        if any(r["question"] in authors for r in rows):
            raise TofuDataError(f"TOFU file {path}: shares a question with the forget/retain files; the holdout "
                                "must be authors never trained on")
        splits[name] = rows
    for name in ("real_authors", "world_facts"):
        rows, path = read(f"{name}_perturbed", OPTION_FIELDS)
        base, b_path = read(name, QA_FIELDS, required=False)
        if base is not None:
            merge_perturbed(base, b_path, rows, path)  # the same questions and answers
        splits[name] = rows
    splits.update(forget)
    splits.update(retain)
    splits["full"] = retain[RETAIN_OF[largest]] + forget[largest]
    splits["holdout"] = splits[HOLDOUTS[largest]]
    splits["retain_eval"] = merge_perturbed([r for r in retain[RETAIN_OF[largest]] if key(r) in
                                             {key(x) for x in retain_eval}], paths[RETAIN_OF[largest]],
                                            retain_eval, r_path)
    return splits, read.sha256


def eval_files(split: str) -> dict[str, str]:
    """The QA files the evaluation of forget split `split` reads for the roles that differ from
    the synthetic layout's: TOFU's retain evaluation set and the split's own holdout."""
    return {"retain": "retain_eval", "holdout": HOLDOUTS[split]}


def unsupported_metrics(data_cfg: dict, metrics: list[str]) -> list[tuple[int, str]]:
    """(index, reason) of each metric of `metrics` that a TOFU study cannot compute."""
    root = Path(data_cfg.get("path", ""))
    holdout_perturbed = all(source_file(root, f"{h}_perturbed") for h in HOLDOUTS.values())
    out = [(i, f"{m} {UNSUPPORTED[m]}") for i, m in enumerate(metrics) if m in UNSUPPORTED]
    out += [(i, HOLDOUT_TRUTH_RATIO) for i, m in enumerate(metrics) if m == "holdout_truth_ratio" and not holdout_perturbed]
    return sorted(out)


def check_study(config: dict) -> None:
    """A tofu study starts from a checkpoint, and computes only the metrics TOFU's fields allow
    (forgetlab.config.check_config calls this; a TofuDataError's text starts with the config key)."""
    data = config["data"]
    if not Path(data["path"]).is_dir():
        raise TofuDataError(f"data.path: directory {data['path']} does not exist (it holds TOFU's files)")
    if not config["model"].get("init_from"):
        raise TofuDataError("model.init_from: a tofu study fine-tunes a local checkpoint (its tokenizer "
                            "encodes TOFU's text); set it")
    refused = unsupported_metrics(data, config["evaluate"]["metrics"])
    if refused:
        i, reason = refused[0]
        raise TofuDataError(f"evaluate.metrics[{i}]: {reason}")
    for name, stage in (config.get("stages") or {}).items():
        if stage["data"] == "world":
            raise TofuDataError(f"stages.{name}.data: world trains on the synthetic world's world_train "
                                "split, which a tofu study does not have")
    if (config.get("sequential") or {}).get("methods"):
        raise TofuDataError("sequential: sequential unlearning chunks a split by author, and TOFU's files "
                            "name no authors")


def prepare(cfg: dict, out_dir: str | Path) -> dict:
    """Check and convert the TOFU files of `cfg["path"]` into `out_dir`; return the manifest.
    `cfg` is the data section with `tokenizer_from` (model.init_from, whose tokenizer the study
    uses) added by the prepare_data recipe."""
    from forgetlab.data.world import save_tokenizer_atomic, write_atomic, write_jsonl
    from forgetlab.model import load_tokenizer

    root, out = Path(cfg["path"]), Path(out_dir)
    if not root.is_dir():
        raise TofuDataError(f"data.path {root} is not a directory (it must hold TOFU's published files)")
    if not cfg.get("tokenizer_from"):
        raise TofuDataError("model.init_from: a tofu study starts from a checkpoint, whose tokenizer it uses")
    splits, read_sha = read_tofu(root)
    out.mkdir(parents=True, exist_ok=True)
    rows = {"corpus.jsonl": 0}
    write_atomic(out / "corpus.jsonl", b"")
    prefix = {"real_authors": "ra", "world_facts": "wf"}
    for name, split_rows in splits.items():
        write_jsonl(out / "qa" / f"{name}.jsonl", with_ids(split_rows, prefix.get(name, "holdout" if "holdout" in name else "tofu")))
        rows[f"qa/{name}.jsonl"] = len(split_rows)
    save_tokenizer_atomic(load_tokenizer(cfg["tokenizer_from"]), out / "tokenizer")
    written = sorted(rows) + sorted(f"tokenizer/{p.name}" for p in (out / "tokenizer").iterdir() if p.is_file())
    manifest = {
        "source": "tofu",
        "seed": cfg["seed"],
        "cfg": cfg,
        "rows": rows,
        "eval_files": {split: eval_files(split) for split in FORGET_SPLITS},
        "inputs_sha256": read_sha,
        "sha256": {path: hashlib.sha256((out / path).read_bytes()).hexdigest() for path in written},
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    write_atomic(out / "manifest.json", text.encode("utf-8"))
    return json.loads(text)
