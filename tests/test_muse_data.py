"""The MUSE source (forgetlab.data.muse): the converter's layout and checks, a muse study's config
checks, and raw-text training data (chunking, every token supervised, which documents each model
trains on). Fixtures are generated (tests/muse_fixtures.py), never real MUSE data."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from forgetlab.config import ConfigError, check_config, stage_params, validate_schema
from forgetlab.data import muse, prepare_data
from forgetlab.losses import token_nll
from forgetlab.model import load_tokenizer
from forgetlab.qa import IGNORE, collate, encode_text_chunks
from forgetlab.recipes import read_jsonl
from forgetlab.recipes.finetune import training_examples
from forgetlab.recipes.unlearn import text_examples
from tests.muse_fixtures import REPO, all_texts, corpus, study_config, tiny_llama, write_corpus, write_rows


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("muse")
    data = corpus()
    return {"data": data, "path": write_corpus(root / "muse-news", data),
            "model": tiny_llama(root / "target", all_texts(data))}


@pytest.fixture(scope="module")
def converted(fixtures, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "data"
    manifest = prepare_data({"source": "muse", "path": str(fixtures["path"]), "seed": 0,
                             "tokenizer_from": str(fixtures["model"])}, out)
    return out, manifest


def convert(fixtures, path: Path, out: Path) -> dict:
    return muse.prepare({"source": "muse", "path": str(path), "seed": 0}, out, init_from=str(fixtures["model"]))


# --- the layout ---------------------------------------------------------------------------------

def test_layout_rows_and_fields(fixtures, converted):
    out, manifest = converted
    data = fixtures["data"]
    assert read_jsonl(out / "corpus.jsonl") == []
    forget_qa = read_jsonl(out / "qa" / "forget.jsonl")
    assert [(r["question"], r["answer"]) for r in forget_qa] == [(r["question"], r["answer"])
                                                                 for r in data["knowmem", "forget_qa"]]
    assert len({r["id"] for r in forget_qa}) == len(forget_qa)
    assert [r["text"] for r in read_jsonl(out / "text" / "retain2.jsonl")] == [r["text"] for r in data["raw", "retain2"]]
    verbmem = read_jsonl(out / "verbmem" / "forget.jsonl")
    assert [(r["prompt"], r["gt"]) for r in verbmem] == [(r["prompt"], r["gt"]) for r in data["verbmem", "forget"]]
    for split in ("forget", "retain", "holdout"):
        assert [r["text"] for r in read_jsonl(out / "privleak" / f"{split}.jsonl")] == \
            [r["text"] for r in data["privleak", split]]
    assert (out / "qa" / "forget_icl.jsonl").exists()  # the optional in-context examples are kept
    assert load_tokenizer(out / "tokenizer").get_vocab() == load_tokenizer(fixtures["model"]).get_vocab()
    assert manifest["rows"]["text/forget.jsonl"] == len(data["raw", "forget"])


def test_manifest_hashes_every_input_and_output(fixtures, converted):
    out, manifest = converted
    inputs = {str(p.relative_to(fixtures["path"])): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in fixtures["path"].rglob("*") if p.is_file()}
    assert manifest["inputs"] == inputs
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["sha256"]) == written
    for rel, digest in manifest["sha256"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    assert json.loads((out / "manifest.json").read_text()) == manifest


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_json_and_parquet_convert_as_jsonl(fixtures, converted, tmp_path, fmt):
    path = write_corpus(tmp_path / fmt, fixtures["data"], fmt)
    convert(fixtures, path, tmp_path / "out")
    for rel in converted[1]["sha256"]:
        if not rel.startswith("tokenizer/"):
            assert (tmp_path / "out" / rel).read_bytes() == (converted[0] / rel).read_bytes(), rel


# --- the checks: each bad input is an error naming the file (and the field) ----------------------

def broken(fixtures, tmp_path, subset, split, rows=None, fmt="jsonl", raw_text=None) -> Path:
    """A copy of the fixture corpus with one file replaced (rows None and no raw_text: removed)."""
    root = write_corpus(tmp_path / "bad", fixtures["data"])
    target = root / subset / f"{split}.jsonl"
    target.unlink()
    if raw_text is not None:
        target.with_suffix(f".{fmt}").write_text(raw_text)
    elif rows is not None:
        write_rows(target.with_suffix(f".{fmt}"), rows, fmt)
    return root


@pytest.mark.parametrize("subset,split", [("raw", "retain2"), ("knowmem", "forget_qa"), ("verbmem", "forget"),
                                          ("privleak", "holdout")])
def test_a_missing_file_is_named(fixtures, tmp_path, subset, split):
    root = broken(fixtures, tmp_path, subset, split)
    with pytest.raises(muse.MuseDataError, match=f"{root / subset / split}.*not found"):
        convert(fixtures, root, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_two_files_for_one_split_are_refused(fixtures, tmp_path):
    root = write_corpus(tmp_path / "bad", fixtures["data"])
    write_rows(root / "raw" / "forget.parquet", fixtures["data"]["raw", "forget"], "parquet")
    with pytest.raises(muse.MuseDataError, match="raw/forget.jsonl and .*raw/forget.parquet"):
        convert(fixtures, root, tmp_path / "out")


def test_an_empty_file_is_named(fixtures, tmp_path):
    root = broken(fixtures, tmp_path, "privleak", "forget", raw_text="")
    with pytest.raises(muse.MuseDataError, match=f"{root / 'privleak' / 'forget.jsonl'}: no rows"):
        convert(fixtures, root, tmp_path / "out")


@pytest.mark.parametrize("rows,fmt,what", [
    ([{"prompt": "p"}], "jsonl", "row 0 has no field 'gt'"),
    ([{"prompt": "p", "gt": 3}], "jsonl", "row 0, field 'gt' is not a non-empty string"),
    ([{"prompt": "  ", "gt": "g"}], "parquet", "row 0, field 'prompt' is not a non-empty string"),
    ([["p", "g"]], "json", "row 0 is a list, not an object"),
])
def test_a_wrong_schema_names_the_file_and_field(fixtures, tmp_path, rows, fmt, what):
    root = broken(fixtures, tmp_path, "verbmem", "forget", rows, fmt)
    with pytest.raises(muse.MuseDataError, match=f"{root / 'verbmem' / ('forget.' + fmt)}: {what}"):
        convert(fixtures, root, tmp_path / "out")


def test_an_unreadable_file_is_named(fixtures, tmp_path):
    root = broken(fixtures, tmp_path, "knowmem", "retain_qa", raw_text='{"question": "q", "answer":\n')
    with pytest.raises(muse.MuseDataError, match=f"{root / 'knowmem' / 'retain_qa.jsonl'}: cannot be read"):
        convert(fixtures, root, tmp_path / "out")


def test_the_tokenizer_needs_model_init_from(fixtures, tmp_path):
    with pytest.raises(muse.MuseDataError, match="model.init_from"):
        prepare_data({"source": "muse", "path": str(fixtures["path"]), "seed": 0}, tmp_path / "out")
    with pytest.raises(muse.MuseDataError, match="data.path: MUSE directory .*nowhere does not exist"):
        convert(fixtures, tmp_path / "nowhere", tmp_path / "out")


# --- a muse study's config checks -----------------------------------------------------------------

def checked(config: dict) -> None:
    validate_schema(config)
    check_config(config)


def test_the_fixture_study_passes_and_its_params_say_muse(fixtures):
    config = study_config(fixtures["path"], fixtures["model"])
    checked(config)
    assert stage_params(config, "prepare_data")["tokenizer_from"] == str(fixtures["model"])
    params = stage_params(config, "unlearn", regularizer="none", seed=0, split="forget", method="npo")
    assert params["data_source"] == "muse" and params["retain_split"] == "retain"


@pytest.mark.parametrize("edit,key", [
    (lambda c: c["model"].update(init_from=None), "model.init_from"),
    (lambda c: c["data"].update(path="/nowhere/muse-news"), "data.path"),
    (lambda c: c.update(splits=["forget10"]), r"splits\[0\]"),
    (lambda c: c["methods"].update(rel={"name": "relabel"}), "methods.rel"),
    (lambda c: c["methods"].update(idk={"name": "idk_dpo"}), "methods.idk"),
    (lambda c: c["evaluate"]["metrics"].insert(1, "forget_quality"), r"evaluate.metrics\[1\]"),
    (lambda c: c["unlearn"].update(eval_every=2), "unlearn.eval_every"),
    (lambda c: c.update(sequential={"chunks": 2, "regularizers": ["none"], "methods": ["npo"]}), "sequential"),
])
def test_what_a_muse_study_cannot_use_is_refused_by_key(fixtures, edit, key):
    config = copy.deepcopy(study_config(fixtures["path"], fixtures["model"]))
    edit(config)
    with pytest.raises(ConfigError, match=f"config key {key}"):
        checked(config)


def test_a_synthetic_study_cannot_use_the_muse_split():
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["splits"] = ["forget10", "forget"]
    config.pop("sequential")
    with pytest.raises(ConfigError, match=r"config key splits\[1\]: 'forget' is the split of a muse study"):
        checked(config)


# --- raw-text training data -------------------------------------------------------------------------

class WordTokenizer:
    """Each word is one token, its id 10 + its length; bos 1, eos 2: ids a test can write by hand."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [10 + len(w) for w in text.split()]}


def test_text_chunks_by_hand():
    tok = WordTokenizer()
    # <bos> a bb ccc dddd <eos> = [1, 11, 12, 13, 14, 2], cut into 3s
    assert encode_text_chunks(tok, "a bb ccc dddd", 3) == [
        {"input_ids": [1, 11, 12], "labels": [1, 11, 12]}, {"input_ids": [13, 14, 2], "labels": [13, 14, 2]}]
    # [1, 11, 12, 13, 2] in 2s: [1, 11], [12, 13], and a lone [2] with nothing to predict is dropped
    assert encode_text_chunks(tok, "a bb ccc", 2) == [
        {"input_ids": [1, 11], "labels": [1, 11]}, {"input_ids": [12, 13], "labels": [12, 13]}]
    assert encode_text_chunks(tok, "a bb", 8) == [{"input_ids": [1, 11, 12, 2], "labels": [1, 11, 12, 2]}]


def test_every_token_of_a_chunk_is_supervised():
    import torch

    chunks = encode_text_chunks(WordTokenizer(), "a bb ccc dddd eeeee", 4)  # [1, 11, 12, 13] [14, 15, 2]
    batch = collate(chunks, pad_id=0)
    assert batch["labels"].tolist() == [[1, 11, 12, 13], [14, 15, 2, IGNORE]]
    # uniform logits over 20 ids: the loss is ln 20 averaged over the 3 + 2 predicted tokens
    logits = torch.zeros(2, 4, 20)
    targets = batch["labels"][:, 1:]
    assert int((targets != IGNORE).sum()) == 5
    assert float(token_nll(logits, batch["labels"])) == pytest.approx(float(torch.log(torch.tensor(20.0))))


def test_target_oracle_and_unlearning_train_on_their_documents(fixtures, converted):
    out, _ = converted
    tok = load_tokenizer(fixtures["model"])
    data = fixtures["data"]

    def chunked(*parts):
        return [c for p in parts for r in data["raw", p] for c in encode_text_chunks(tok, r["text"], 16)]

    config = study_config(fixtures["path"], fixtures["model"])
    target = stage_params(config, "finetune", regularizer="none", seed=0, role="target")
    oracle = stage_params(config, "finetune", regularizer="none", seed=0, role="oracle", split="forget")
    examples, files = training_examples(target, tok, out, 16)
    assert examples == chunked("forget", "retain1", "retain2")
    assert files == [out / "text" / f"{p}.jsonl" for p in ("forget", "retain1", "retain2")]
    assert training_examples(oracle, tok, out, 16)[0] == chunked("retain1", "retain2")
    forget, retain, files = text_examples(tok, out, 16)
    assert forget == [{"forget": c} for c in chunked("forget")] and retain == chunked("retain1")
    # the synthetic default still trains on QA (no data_source in its params)
    assert "data_source" not in stage_params(yaml.safe_load((REPO / "config" / "smoke.yaml").read_text()),
                                             "finetune", regularizer="none", seed=0, role="target")
