"""The MUSE source (`data.source: muse`): one local MUSE corpus (News or Books; Shi et al. 2025,
"MUSE: Machine Unlearning Six-Way Evaluation for Language Models"), checked and converted.

`data.path` mirrors the published dataset (muse-bench/MUSE-News, muse-bench/MUSE-Books): one
directory per subset, one file per split, named `<path>/<subset>/<split>.<ext>` with ext one of
jsonl (JSON lines), json (a JSON array of objects, or JSON lines) or parquet:

    raw/{forget,retain1,retain2,holdout}        field text         the documents
    knowmem/{forget_qa,retain_qa}               question, answer   knowledge QA (`*_qa_icl` optional)
    verbmem/forget                              prompt, gt         forget-text prefixes and their true continuations
    privleak/{forget,retain,holdout}            text               the membership sets

Checked, each failure an error naming the file (and the field): a missing file (or two files for
one split), an unreadable file, an empty file, a row that is not an object, or a row whose field
is missing, not a string or blank. The study must set `model.init_from` (the MUSE target's base
model checkpoint: there is no pretraining on MUSE); its tokenizer is copied to tokenizer/.

Written into `out_dir` (the layout of forgetlab.data, plus text/, verbmem/ and privleak/):

    corpus.jsonl                     empty (no pretraining)
    qa/forget.jsonl, qa/retain.jsonl knowmem forget_qa / retain_qa as forgetlab QA rows (id, question, answer)
    qa/<x>_icl.jsonl                 the in-context examples, when given (not used yet)
    text/<raw split>.jsonl           the documents (id, text)
    verbmem/forget.jsonl             (id, prompt, gt)
    privleak/<split>.jsonl           (id, text)
    tokenizer/                       model.init_from's tokenizer
    manifest.json                    rows, the sha256 of every input read and every file written

Training on raw text (forgetlab.recipes.finetune/unlearn with `data_source: muse`): the target
trains on TEXT_SETS["full"], the oracle on TEXT_SETS["retain"], unlearning's forget batches come
from TEXT_SETS["forget"] and its retain batches from TEXT_SETS["unlearn_retain"] (retain1, as
open-unlearning's MUSE unlearning).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from forgetlab.data.world import save_tokenizer_atomic, write_atomic, write_jsonl

SPLIT = "forget"  # the one split of a muse study, and its retain complement
RETAIN = "retain"
EXTENSIONS = ("jsonl", "json", "parquet")
# subset -> (required splits, optional splits, fields of every row)
SUBSETS = {
    "raw": (("forget", "retain1", "retain2", "holdout"), (), ("text",)),
    "knowmem": (("forget_qa", "retain_qa"), ("forget_qa_icl", "retain_qa_icl"), ("question", "answer")),
    "verbmem": (("forget",), (), ("prompt", "gt")),
    "privleak": (("forget", "retain", "holdout"), (), ("text",)),
}
# the documents each training set is made of (text/<raw split>.jsonl, in this order)
TEXT_SETS = {"full": ("forget", "retain1", "retain2"), "retain": ("retain1", "retain2"),
             "forget": ("forget",), "unlearn_retain": ("retain1",)}


class MuseDataError(ValueError):
    """A MUSE input that cannot be converted; the message names the file (and field)."""


def find_file(root: Path, subset: str, split: str, required: bool = True) -> Path | None:
    """The one file of `<root>/<subset>/<split>.<ext>`; none (required) or several is an error."""
    found = [root / subset / f"{split}.{ext}" for ext in EXTENSIONS if (root / subset / f"{split}.{ext}").is_file()]
    if len(found) > 1:
        raise MuseDataError(f"{found[0]} and {found[1]}: two files for MUSE {subset}/{split}; keep one")
    if not found and required:
        raise MuseDataError(f"{root / subset / split}.{{{','.join(EXTENSIONS)}}}: MUSE {subset}/{split} not found "
                            f"(data.path must hold <subset>/<split>.jsonl|json|parquet, see docs/muse.md)")
    return found[0] if found else None


def read_rows(path: Path) -> list:
    """The rows of a jsonl, json (array or lines) or parquet file; unreadable is an error naming it."""
    try:
        if path.suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(path).to_dict("records")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json" and text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except Exception as e:  # a corrupt file of any of the three formats
        raise MuseDataError(f"{path}: cannot be read as {path.suffix[1:]} ({type(e).__name__}: {e})") from None
    return rows


def check_rows(path: Path, rows: list, fields: tuple[str, ...]) -> list[dict]:
    """Every row an object whose `fields` are non-blank strings; an empty file is an error."""
    if not rows:
        raise MuseDataError(f"{path}: no rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise MuseDataError(f"{path}: row {i} is a {type(row).__name__}, not an object with {', '.join(fields)}")
        for field in fields:
            if field not in row:
                raise MuseDataError(f"{path}: row {i} has no field {field!r} (the rows need {', '.join(fields)})")
            if not isinstance(row[field], str) or not row[field].strip():
                raise MuseDataError(f"{path}: row {i}, field {field!r} is not a non-empty string")
    return [{field: row[field] for field in fields} for row in rows]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_subsets(root: Path) -> tuple[dict[tuple[str, str], list[dict]], dict[str, str]]:
    """(subset, split) -> checked rows, and the sha256 of every input file (by its path under root)."""
    if not root.is_dir():
        raise MuseDataError(f"data.path: MUSE directory {root} does not exist")
    data, inputs = {}, {}
    for subset, (required, optional, fields) in SUBSETS.items():
        for split in required + optional:
            path = find_file(root, subset, split, required=split in required)
            if path is None:
                continue
            data[subset, split] = check_rows(path, read_rows(path), fields)
            inputs[str(path.relative_to(root))] = sha256(path)
    return data, inputs


def converted(data: dict) -> dict[str, list[dict]]:
    """The files to write (relative path -> rows), each row with a stable id."""
    def ided(prefix: str, rows: list[dict]) -> list[dict]:
        return [{"id": f"{prefix}-{i:05d}", **row} for i, row in enumerate(rows)]

    out = {"corpus.jsonl": []}
    for (subset, split), rows in data.items():
        if subset == "knowmem":
            out[f"qa/{split.replace('_qa', '')}.jsonl"] = ided(f"knowmem-{split}", rows)
        else:
            out[f"{'text' if subset == 'raw' else subset}/{split}.jsonl"] = ided(f"{subset}-{split}", rows)
    return out


def prepare(cfg: dict, out_dir: str | Path, init_from: str | None = None) -> dict:
    """Check the MUSE files of `cfg["path"]` and write the layout above into `out_dir`; returns the
    manifest. `init_from` (model.init_from) provides the tokenizer; the stage passes it as
    cfg["tokenizer_from"] when it is not given."""
    from forgetlab.model import load_tokenizer

    init_from = init_from or cfg.get("tokenizer_from")
    if not init_from:
        raise MuseDataError("model.init_from: a muse study needs a local checkpoint (the model to fine-tune on "
                            "MUSE, whose tokenizer the data uses); set model.init_from")
    if not Path(init_from).is_dir():
        raise MuseDataError(f"model.init_from: checkpoint directory {init_from} does not exist")
    root, out = Path(cfg["path"]), Path(out_dir)
    data, inputs = read_subsets(root)
    out.mkdir(parents=True, exist_ok=True)
    files = converted(data)
    for rel, rows in files.items():
        write_jsonl(out / rel, rows)
    save_tokenizer_atomic(load_tokenizer(init_from), out / "tokenizer")
    written = sorted(files) + sorted(f"tokenizer/{p.name}" for p in (out / "tokenizer").iterdir() if p.is_file())
    manifest = {
        "source": "muse",
        "cfg": cfg,
        "path": str(root),
        "init_from": str(init_from),
        "rows": {rel: len(rows) for rel, rows in files.items()},
        "inputs": inputs,
        "text_sets": {name: list(parts) for name, parts in TEXT_SETS.items()},
        "sha256": {rel: sha256(out / rel) for rel in written},
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    write_atomic(out / "manifest.json", text.encode("utf-8"))
    return json.loads(text)


def read_texts(data_dir: str | Path, name: str) -> list[str]:
    """The documents of training set `name` (TEXT_SETS), in order."""
    texts = []
    for part in TEXT_SETS[name]:
        path = Path(data_dir) / "text" / f"{part}.jsonl"
        if not path.is_file():
            raise MuseDataError(f"{path} not found: prepare_data of a muse study writes text/<raw split>.jsonl")
        with open(path, encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    return texts


def text_files(data_dir: str | Path, name: str) -> list[Path]:
    return [Path(data_dir) / "text" / f"{part}.jsonl" for part in TEXT_SETS[name]]


# ----------------------------------------------------------------------------- the study's checks
# what a muse study can compute: the MUSE metrics on MUSE's own files (forgetlab.eval.muse)
MUSE_METRICS = ("knowmem", "verbmem", "privleak", "privleak_min_k_plus_plus")


def check_study(config: dict, build_method) -> None:
    """What a muse study may not use, each an error naming the key (forgetlab.config adds
    `config key`): splits other than `forget`, methods that train on QA-only views (a refusal or a
    wrong answer to a question), metrics other than MUSE_METRICS, the unlearning trajectory and
    sequential runs (both read TOFU-schema QA), world stages; and model.init_from and data.path must
    be set, the latter an existing directory (the files in it are checked by `prepare`)."""
    if not config["model"].get("init_from"):
        raise MuseDataError("model.init_from: a muse study fine-tunes a given checkpoint (no pretraining on MUSE); "
                            "set model.init_from to its local directory")
    if not Path(config["data"]["path"]).is_dir():
        raise MuseDataError(f"data.path: MUSE directory {config['data']['path']} does not exist")
    for i, split in enumerate(config["splits"]):
        if split != SPLIT:
            raise MuseDataError(f"splits[{i}]: a muse study has the one split {SPLIT!r}, got {split!r}")
    for entry, spec in config["methods"].items():
        views = build_method(spec).forget_views
        if views:
            raise MuseDataError(f"methods.{entry}: {spec['name']} trains on QA-only views of the forget rows "
                                f"({', '.join(views)}), which MUSE's raw forget text does not have")
        if (spec.get("train") or {}).get("eval_every"):
            raise MuseDataError(f"methods.{entry}.train.eval_every: the unlearning trajectory reads TOFU-schema QA; "
                                "set 0 for a muse study")
    for i, name in enumerate(config["evaluate"]["metrics"]):
        if name not in MUSE_METRICS:
            raise MuseDataError(f"evaluate.metrics[{i}]: {name!r} needs TOFU/synthetic fields; a muse study "
                                f"computes {', '.join(MUSE_METRICS)}")
    if config["unlearn"].get("eval_every"):
        raise MuseDataError("unlearn.eval_every: the unlearning trajectory reads TOFU-schema QA; set 0 for a muse study")
    if (config.get("sequential") or {}).get("methods"):
        raise MuseDataError("sequential: sequential unlearning cuts the forget QA by author; not supported for a muse study")
    for name, stage in (config.get("stages") or {}).items():
        if stage["data"] != "authors":
            raise MuseDataError(f"stages.{name}.data: a muse study has only its own text (`authors`: forget + retain "
                                "documents for the target, retain for the oracle)")


def check_synthetic_splits(config: dict) -> None:
    """The muse split is not a split of the synthetic world (or TOFU)."""
    for i, split in enumerate(config["splits"]):
        if split == SPLIT:
            raise MuseDataError(f"splits[{i}]: {SPLIT!r} is the split of a muse study (data.source: muse)")
