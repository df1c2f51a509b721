"""Tests of the synthetic world (forgetlab.data): determinism, splits, leakage, perturbations,
relabel answers, the real-authors population, tokenizer."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from forgetlab.data import prepare_data
from forgetlab.data.vocab import (
    ATTRIBUTES,
    AUTHOR_ATTRIBUTES,
    PERSON_ATTRIBUTES,
    check_vocab,
)
from forgetlab.data.world import (
    DEFAULT_N_REAL_AUTHORS,
    FORM_FIELDS,
    N_PERTURBED,
    N_RELABEL,
    QA_SPLITS,
    RELABEL_FIELD,
    build_qa_splits,
    build_world,
)
from tests.helpers import REPO

CFG = {
    "seed": 0,
    "world": {"n_people": 40, "renderings": 2, "n_world_facts": 20, "n_real_authors": 7},
    "authors": {"n": 20, "n_holdout": 4},
    "tokenizer": {"vocab_size": 600},
}
FORGET_RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
N_REAL = 3  # ceil(7 questions / 3 per real author)
POPULATION_SPLITS = ("world_facts", "real_authors")  # QA about pretraining entities, not fine-tuning authors


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def authors(rows: list[dict]) -> set[str]:
    return {r["entity_id"] for r in rows}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    prepare_data(copy.deepcopy(CFG), out)
    return out


@pytest.fixture(scope="module")
def qa(data_dir) -> dict[str, list[dict]]:
    return {split: read_jsonl(data_dir / "qa" / f"{split}.jsonl") for split in QA_SPLITS}


def test_vocab_invariants():
    check_vocab()
    assert len(AUTHOR_ATTRIBUTES) >= 8
    assert all(len(ATTRIBUTES[a].values) >= 15 for a in (*AUTHOR_ATTRIBUTES, *PERSON_ATTRIBUTES))
    # the fill-in-the-blank's floor: a model that never saw an author's fact spreads its guess over the
    # attribute's values, so a pool of K gives the true value about 1/K (docs/metrics.md); with the
    # 16-value pools the oracle's guess was a third of the target's figure (docs/benchmarks.md, stop 32)
    sizes = {a: len(ATTRIBUTES[a].values) for a in AUTHOR_ATTRIBUTES}
    assert min(sizes.values()) >= 30, sizes


def test_layout_and_manifest(data_dir, qa):
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["cfg"] == CFG
    hashes = file_hashes(data_dir)
    assert "tokenizer/tokenizer.json" in manifest["sha256"]
    for path, digest in manifest["sha256"].items():
        assert hashes[path] == digest, path
    assert set(hashes) - set(manifest["sha256"]) == {"manifest.json"}
    assert manifest["rows"]["corpus.jsonl"] == (40 + N_REAL) * 2
    for split, rows in qa.items():
        assert manifest["rows"][f"qa/{split}.jsonl"] == len(rows)
        if split not in POPULATION_SPLITS:
            assert manifest["authors"][split] == len(authors(rows))
    assert manifest["real_authors"] == N_REAL and manifest["real_authors_asked"] == len(authors(qa["real_authors"]))
    assert manifest["n_relabel"] == N_RELABEL
    assert not [p for p in data_dir.rglob("*") if p.name.endswith(".tmp")]


def test_determinism(tmp_path, data_dir):
    prepare_data(copy.deepcopy(CFG), tmp_path / "again")
    assert file_hashes(tmp_path / "again") == file_hashes(data_dir)
    other = copy.deepcopy(CFG)
    other["seed"] = 1
    prepare_data(other, tmp_path / "other")
    for split in ("full", "holdout", "world_facts", "real_authors"):
        assert (tmp_path / "other" / "qa" / f"{split}.jsonl").read_bytes() != (
            data_dir / "qa" / f"{split}.jsonl").read_bytes()


def test_schema(qa):
    keys = {"id", "entity_id", "attribute", "question", "answer", "paraphrased_answer", "perturbed_answer",
            *FORM_FIELDS, RELABEL_FIELD}  # the TOFU schema, the untrained forms (see test_forms), relabel's targets
    for split, rows in qa.items():
        assert rows, split
        for r in rows:
            assert set(r) == keys
            assert r["id"] == f"{r['entity_id']}_{r['attribute']}"
    assert len(qa["full"]) == CFG["authors"]["n"] * len(AUTHOR_ATTRIBUTES)
    assert len(qa["holdout"]) == CFG["authors"]["n_holdout"] * len(AUTHOR_ATTRIBUTES)
    assert len(qa["world_facts"]) == CFG["world"]["n_world_facts"]
    assert len({r["id"] for r in qa["world_facts"]}) == len(qa["world_facts"])
    assert len(qa["real_authors"]) == CFG["world"]["n_real_authors"]
    assert len({r["id"] for r in qa["real_authors"]}) == len(qa["real_authors"])
    assert all(r["attribute"] in AUTHOR_ATTRIBUTES for r in qa["real_authors"])


def test_splits(qa):
    full = authors(qa["full"])
    assert len(full) == CFG["authors"]["n"]
    expected = {"forget01": 1, "forget05": 1, "forget10": 2}
    for forget, retain in FORGET_RETAIN.items():
        f, r = authors(qa[forget]), authors(qa[retain])
        assert len(f) == expected[forget]
        assert f <= full and not (f & r) and f | r == full
        assert len(qa[forget]) + len(qa[retain]) == len(qa["full"])
    assert authors(qa["forget01"]) <= authors(qa["forget05"]) <= authors(qa["forget10"])


def test_split_sizes_default_scale():
    cfg = copy.deepcopy(CFG)
    cfg["authors"]["n"] = 200
    world = build_world(cfg)
    sizes = {k: len(v) for k, v in world.forget.items()}
    assert sizes == {"forget01": 2, "forget05": 10, "forget10": 20}
    assert set(world.forget["forget01"]) < set(world.forget["forget05"]) < set(world.forget["forget10"])


def test_names_unique_and_populations_disjoint():
    world = build_world(CFG)
    entities = world.people + world.authors + world.holdout + world.real_authors
    assert len(world.real_authors) == N_REAL
    assert len({e.name for e in entities}) == len(entities)
    assert len({e.id for e in entities}) == len(entities)


def test_holdout_and_authors_not_in_training(data_dir, qa):
    world = build_world(CFG)
    corpus = read_jsonl(data_dir / "corpus.jsonl")
    text = "\n".join(r["text"] for r in corpus)
    holdout = authors(qa["holdout"])
    assert holdout == {e.id for e in world.holdout}
    assert not holdout & authors(qa["full"])
    for e in world.holdout + world.authors:
        assert not re.search(rf"\b{re.escape(e.name)}\b", text), e.name
        assert e.name not in text
    full_text = json.dumps(qa["full"])
    for e in world.holdout:
        assert e.name not in full_text
    # world facts are about pretraining people that the corpus describes
    people = {p.id: p for p in world.people}
    docs: dict[str, str] = {}
    for r in corpus:
        docs[r["person_id"]] = docs.get(r["person_id"], "") + r["text"]
    for r in qa["world_facts"]:
        person = people[r["entity_id"]]
        assert r["entity_id"] in docs and r["attribute"] in PERSON_ATTRIBUTES
        assert person.name in docs[person.id] and person.facts[r["attribute"]] in docs[person.id]
        assert person.facts[r["attribute"]] in r["answer"]
    # real authors, like TOFU's, are writers the pretraining corpus describes (author facts, not
    # the people's), and no world_facts entity is one of them
    real = {a.id: a for a in world.real_authors}
    assert not authors(qa["real_authors"]) & authors(qa["world_facts"])
    assert not {e.name for e in world.real_authors} & {p.name for p in world.people}
    for r in qa["real_authors"]:
        author = real[r["entity_id"]]
        assert set(author.facts) == set(AUTHOR_ATTRIBUTES)
        assert author.name in docs[author.id] and author.facts[r["attribute"]] in docs[author.id]
        assert author.facts[r["attribute"]] in r["answer"] and author.name in r["question"]
    assert author.name not in json.dumps(qa["full"] + qa["holdout"] + qa["world_facts"])


def test_corpus_renderings_vary(data_dir):
    corpus = read_jsonl(data_dir / "corpus.jsonl")
    by_person: dict[str, list[str]] = {}
    for r in corpus:
        assert set(r) == {"person_id", "text"}
        by_person.setdefault(r["person_id"], []).append(r["text"])
    assert len(by_person) == CFG["world"]["n_people"] + N_REAL  # the people, then the real authors
    for texts in by_person.values():
        assert len(texts) == CFG["world"]["renderings"] and len(set(texts)) == len(texts)


def test_perturbed_answers(qa):
    for split in ("full", "holdout", "world_facts", "real_authors"):
        for r in qa[split]:
            values = ATTRIBUTES[r["attribute"]].values
            true = [v for v in values if v in r["paraphrased_answer"]]
            assert len(true) == 1, r
            assert true[0] in r["answer"]
            assert r["answer"] != r["paraphrased_answer"]
            pert = r["perturbed_answer"]
            assert len(pert) == N_PERTURBED >= 3 and len(set(pert)) == len(pert)
            for p in pert:
                assert p != r["answer"] and p != r["paraphrased_answer"]
                wrong = [v for v in values if v in p]
                assert len(wrong) == 1 and wrong[0] != true[0], (p, wrong)
                assert p.replace(wrong[0], true[0]) == r["paraphrased_answer"]


def test_tokenizer_round_trip(data_dir, qa):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(data_dir / "tokenizer"))
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    specials = [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id]
    assert None not in specials and len(set(specials)) == 4
    assert len(tok) <= CFG["tokenizer"]["vocab_size"]
    for r in qa["full"][:20] + qa["world_facts"][:5]:
        for text in (r["answer"], " " + r["answer"], r["question"], r["perturbed_answer"][0]):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert not set(ids) & set(specials)
            assert tok.decode(ids) == text
    # no post-processor: default encoding adds no bos/eos either
    ids = tok("Question: hello")["input_ids"]
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids


def value_of(attribute: str, text: str) -> str:
    found = [v for v in ATTRIBUTES[attribute].values if v in text]
    assert len(found) == 1, (attribute, text, found)
    return found[0]


def check_relabel_answers(qa: dict[str, list[dict]]) -> int:
    """Each row's relabel answers: N_RELABEL distinct sentences, the answer's sentence with another
    value, none of them a value that evaluation scores (true, perturbed, multiple-choice)."""
    checked = 0
    for split, rows in qa.items():
        for r in rows:
            true = r["cloze_answer"]
            relabel = r[RELABEL_FIELD]
            assert len(relabel) == N_RELABEL == len(set(relabel)), r["id"]
            values = {value_of(r["attribute"], a) for a in relabel}
            perturbed = {value_of(r["attribute"], p) for p in r["perturbed_answer"]}
            assert len(values) == N_RELABEL and true not in values
            assert not values & perturbed, (split, r["id"], values & perturbed)
            assert not values & set(r["mc_options"]), (split, r["id"])
            assert not set(relabel) & {r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]}
            assert {a.replace(value_of(r["attribute"], a), true) for a in relabel} == {r["answer"]}
            checked += 1
    return checked


@pytest.mark.parametrize("config", ["smoke.yaml", "config.yaml"])
def test_relabel_answers_are_disjoint_from_what_evaluation_scores(config):
    cfg = yaml.safe_load((REPO / "config" / config).read_text())["data"]
    world = build_world(cfg)
    qa = build_qa_splits(world, cfg)
    assert check_relabel_answers(qa) == sum(len(rows) for rows in qa.values())
    assert qa["forget10"] and all(r[RELABEL_FIELD] for r in qa["forget10"])


def test_relabel_answers_in_the_written_files(qa):
    assert check_relabel_answers(qa) > 0


def test_real_authors_default_and_leave_the_rest_of_the_world_unchanged():
    few, many, default = (copy.deepcopy(CFG) for _ in range(3))
    few["world"]["n_real_authors"], many["world"]["n_real_authors"] = 1, 30
    del default["world"]["n_real_authors"]
    worlds = {name: build_world(cfg) for name, cfg in (("few", few), ("many", many), ("default", default))}
    assert [len(w.real_authors) for w in worlds.values()] == [1, 10, 34]  # ceil(n / 3)
    assert len(build_qa_splits(worlds["default"], default)["real_authors"]) == DEFAULT_N_REAL_AUTHORS == 100
    for w in worlds.values():
        assert (w.people, w.authors, w.holdout, w.forget) == (
            worlds["few"].people, worlds["few"].authors, worlds["few"].holdout, worlds["few"].forget)
    # the one real author of `few` is the first of `many`: the population only grows at its end
    assert worlds["few"].real_authors == worlds["many"].real_authors[:1]
    qa_few, qa_many = build_qa_splits(worlds["few"], few), build_qa_splits(worlds["many"], many)
    assert all(qa_few[s] == qa_many[s] for s in QA_SPLITS if s != "real_authors")
    with pytest.raises(ValueError, match="n_real_authors"):
        build_qa_splits(worlds["few"], {**few, "world": {**few["world"], "n_real_authors": 10}})


# --- world_train: the general-knowledge QA of the `world` training stage (forgetlab.paths) --------

# sha256 over (path, sha256) of every file but manifest.json and qa/world_train.jsonl, for CFG, computed
# with the code before world_train existed (commit bf01c69): adding the split changed no other byte.
# Re-taken on 2026-12-07 when the value pools grew (forgetlab.data.vocab): bf01c69's code with today's
# value tuples swapped into its vocab.py (the tuples were the same text there as before the change)
BEFORE_WORLD_TRAIN = "fa0d0e00d7501beba8931b39d0cc73a4a865ed8679d21e647efae691e816c880"


def without_later_fields(path: Path) -> bytes:
    """A QA file as the code before `mc_answers` wrote it: each row re-serialised without the field
    (prepare_data writes json.dumps(row, ensure_ascii=False) per line, so this gives those bytes back)."""
    rows = [{k: v for k, v in r.items() if k != "mc_answers"} for r in read_jsonl(path)]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def files_digest(root: Path, leave_out=("manifest.json", "qa/world_train.jsonl")) -> str:
    """The digest of every file but `leave_out`, the QA files taken without the later `mc_answers`."""
    digest = hashlib.sha256()
    for rel, sha in file_hashes(root).items():
        if rel in leave_out:
            continue
        if rel.startswith("qa/"):
            sha = hashlib.sha256(without_later_fields(root / rel)).hexdigest()
        digest.update(f"{rel}:{sha};".encode())
    return digest.hexdigest()


def test_world_train_changes_no_other_file(data_dir):
    assert files_digest(data_dir) == BEFORE_WORLD_TRAIN


def test_world_train_is_disjoint_from_the_evaluation_rows(data_dir):
    train = read_jsonl(data_dir / "qa" / "world_train.jsonl")
    world_facts, real = (read_jsonl(data_dir / "qa" / f"{s}.jsonl") for s in ("world_facts", "real_authors"))
    people = {r["entity_id"] for r in train}
    assert people and all(e.startswith("p") for e in people)  # pretraining people
    assert not people & (authors(world_facts) | authors(real))  # no entity world_facts or real_authors asks about
    asked = {r["question"] for r in world_facts + real}
    assert not {r["question"] for r in train} & asked
    assert len({r["id"] for r in train}) == len(train)
    # the default size: as many rows as the author QA (20 authors x 9 facts), the free facts allowing
    assert len(train) == CFG["authors"]["n"] * len(AUTHOR_ATTRIBUTES) == 180
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["rows"]["qa/world_train.jsonl"] == 180 and manifest["world_train_people"] == len(people)


def test_world_train_size_is_seeded_on_its_own(tmp_path):
    small = copy.deepcopy(CFG)
    small["world"]["n_world_train"] = 12
    prepare_data(small, tmp_path / "small")
    rows = read_jsonl(tmp_path / "small" / "qa" / "world_train.jsonl")
    assert len(rows) == 12
    assert files_digest(tmp_path / "small") == BEFORE_WORLD_TRAIN  # its size changes nothing else, the tokenizer included
    world = build_world(small)
    free = [p for p in world.people if p.id not in authors(build_qa_splits(world, small)["world_facts"])]
    facts = len(PERSON_ATTRIBUTES) * len(free)
    too_many = copy.deepcopy(small)
    too_many["world"]["n_world_train"] = facts + 1
    with pytest.raises(ValueError, match=f"n_world_train={facts + 1} exceeds the {facts} facts"):
        build_qa_splits(world, too_many)
    too_many["world"]["n_world_train"] = facts  # every free fact: allowed
    assert len(build_qa_splits(world, too_many)["world_train"]) == facts


def test_drill_people_state_every_fact_in_every_form_and_leave_the_evaluation_rows_alone(tmp_path, data_dir):
    drilled = copy.deepcopy(CFG)
    drilled["world"]["n_drill_people"] = 3
    prepare_data(drilled, tmp_path / "drill")
    out = tmp_path / "drill"
    corpus, before = read_jsonl(out / "corpus.jsonl"), read_jsonl(data_dir / "corpus.jsonl")
    assert corpus[:len(before)] == before  # the biographies as without drill people, then the QA documents
    docs = corpus[len(before):]
    people = sorted({d["person_id"] for d in docs})
    assert len(people) == 3 and len(docs) == 3 * 4
    world = build_world(drilled)
    by_id = {p.id: p for p in world.people}
    for pid in people:
        person = by_id[pid]
        texts = [d["text"] for d in docs if d["person_id"] == pid]
        # one document per form, one "Question: ...\nAnswer: ..." per fact, worked out from the facts
        cloze = {f"Question: Fill in the blank: {t.replace('{name}', person.name).replace('{value}', '___')}\n"
                 f"Answer: {v}" for a, v in person.facts.items() for t in ATTRIBUTES[a].templates}
        lines = [q + "\n" + a for q, a in zip(texts[2].split("\n")[::2], texts[2].split("\n")[1::2])]
        assert len(lines) == len(person.facts) and set(lines) <= cloze
        asked = {ATTRIBUTES[a].question.format(name=person.name) for a in person.facts}
        assert {line.split("\n")[0][len("Question: "):] for line in zip_lines(texts[0])} == asked
        assert all(line.count("Options: ") == 1 for line in zip_lines(texts[3]))
    # nobody that a split asks about, and world_train leaves them out
    qa = {s: read_jsonl(out / "qa" / f"{s}.jsonl") for s in ("world_facts", "world_train", "real_authors", "full")}
    assert not set(people) & set().union(*(authors(rows) for rows in qa.values()))
    # every QA split but world_train is byte-identical to the world without drill people
    for split in QA_SPLITS:
        assert (out / "qa" / f"{split}.jsonl").read_bytes() == (data_dir / "qa" / f"{split}.jsonl").read_bytes()
    assert json.loads((out / "manifest.json").read_text())["drill_people"] == 3
    too_many = copy.deepcopy(CFG)
    too_many["world"]["n_drill_people"] = 41
    with pytest.raises(ValueError, match="data.world.n_drill_people=41 exceeds"):
        build_qa_splits(build_world(too_many), too_many)


def test_drill_writers_are_writers_drilled_in_every_form_whom_no_split_asks_about(tmp_path, data_dir):
    cfg = copy.deepcopy(CFG)
    cfg["world"]["n_drill_writers"] = 2
    cfg["authors"]["drill_qa"] = 2 * len(AUTHOR_ATTRIBUTES) * 4  # every (fact, form) pair of the two writers
    out = tmp_path / "writers"
    prepare_data(cfg, out)
    world, plain = build_world(cfg), build_world(copy.deepcopy(CFG))
    # drawn last: every other entity, name and facts, is the same as without them
    for population in ("people", "authors", "holdout", "real_authors"):
        assert getattr(world, population) == getattr(plain, population)
    writers = world.drill_writers
    assert [w.id for w in writers] == ["w0000", "w0001"]
    assert all(tuple(w.facts) == AUTHOR_ATTRIBUTES for w in writers)
    others = {e.name for e in world.people + world.authors + world.holdout + world.real_authors}
    assert len({w.name for w in writers} | others) == len(others) + 2
    # the corpus: the biographies as without them, then theirs (renderings each), then one drill document per form
    corpus, before = read_jsonl(out / "corpus.jsonl"), read_jsonl(data_dir / "corpus.jsonl")
    assert corpus[:len(before)] == before
    assert [d["person_id"] for d in corpus[len(before):]] == ["w0000"] * 2 + ["w0001"] * 2 + ["w0000"] * 4 + ["w0001"] * 4
    for w in writers:
        bios = [d["text"] for d in corpus[len(before):len(before) + 4] if d["person_id"] == w.id]
        assert all(w.name in b and all(v in b for v in w.facts.values()) for b in bios)
    # the genre's fill-in-the-blank, an author attribute, is drilled in the corpus and in the fine-tuning mix
    genre = {f"Fill in the blank: {t.format(name=writers[0].name, value='___')}" for t in ATTRIBUTES["genre"].templates}
    drilled = [d["text"] for d in corpus if d["person_id"] == "w0000" and "Fill in the blank" in d["text"]]
    assert len(drilled) == 1 and f"Answer: {writers[0].facts['genre']}" in drilled[0]
    mix = [r for r in read_jsonl(out / "qa" / "train" / "full.jsonl") if r.get("entity_id") == "w0000"]
    cloze = [r for r in mix if r["attribute"] == "genre" and r["form"] == "cloze_question"]
    assert len(cloze) == 1 and cloze[0]["question"] in genre and cloze[0]["answer"] == writers[0].facts["genre"]
    # nobody that a split asks about, and every QA split is byte-identical to the world without them
    for split in QA_SPLITS:
        assert (out / "qa" / f"{split}.jsonl").read_bytes() == (data_dir / "qa" / f"{split}.jsonl").read_bytes()
    assert json.loads((out / "manifest.json").read_text())["drill_writers"] == 2


def zip_lines(text: str) -> list[str]:
    """The QA pairs of a drill document (each two lines: question, answer)."""
    lines = text.split("\n")
    return [q + "\n" + a for q, a in zip(lines[::2], lines[1::2])]
