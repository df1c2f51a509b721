"""Tests of the author training sets (forgetlab.data.training_sets): answer variants, the drill
mix, what fine-tuning reads, and that nothing evaluated changes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from forgetlab.data import prepare_data
from forgetlab.data.training_sets import answer_variants, biography_rows, drill_rows, replay_rows, training_sets
from forgetlab.data.vocab import ATTRIBUTES
from forgetlab.data.world import QA_SPLITS, build_qa_splits, build_world, drill_people, entity_qa
from forgetlab.model import load_tokenizer
from forgetlab.recipes.finetune import training_examples

CFG = {
    "seed": 0,
    "world": {"n_people": 40, "renderings": 2, "n_world_facts": 20, "n_real_authors": 7, "n_drill_people": 3},
    "authors": {"n": 20, "n_holdout": 4},
    "tokenizer": {"vocab_size": 600},
}
TRAINED = {"answer_variants": True, "drill_qa": 10, "replay_biographies": 1}
TRAIN_SETS = ("full", "retain99", "retain95", "retain90")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> tuple[Path, Path]:
    """(the world without training options, the same world with both)."""
    plain, trained = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("trained")
    prepare_data(copy.deepcopy(CFG), plain)
    cfg = copy.deepcopy(CFG)
    cfg["authors"].update(TRAINED)
    prepare_data(cfg, trained)
    return plain, trained


def test_answer_variants_of_a_worked_row():
    # occupation has three templates: the answer's, the paraphrase's, and the one variant
    row = {"attribute": "occupation", "cloze_answer": "baker", "answer": "Ada Darvel works as a baker.",
           "paraphrased_answer": "By profession, Ada Darvel is a baker."}
    assert answer_variants(row, "Ada Darvel") == ["Ada Darvel earns a living as a baker."]
    # birthplace has four: two variants, in template order
    row = {"attribute": "birthplace", "cloze_answer": "Oslo", "answer": "Ada Darvel is a native of Oslo.",
           "paraphrased_answer": "Oslo is the birthplace of Ada Darvel."}
    assert answer_variants(row, "Ada Darvel") == ["Ada Darvel was born in Oslo.", "Ada Darvel came into the world in Oslo."]


def test_author_biographies_state_every_fact_once_in_its_variants_only():
    occupation = {"entity_id": "a0", "attribute": "occupation", "cloze_answer": "baker",
                  "answer": "Ada Darvel works as a baker.", "paraphrased_answer": "By profession, Ada Darvel is a baker."}
    birthplace = {"entity_id": "a0", "attribute": "birthplace", "cloze_answer": "Oslo",
                  "answer": "Ada Darvel is a native of Oslo.", "paraphrased_answer": "Oslo is the birthplace of Ada Darvel."}
    other = {**occupation, "entity_id": "a1", "answer": "Bo Kest works as a baker.",
             "paraphrased_answer": "By profession, Bo Kest is a baker."}
    bios = biography_rows([occupation, birthplace, other], {"a0": "Ada Darvel", "a1": "Bo Kest"}, 2, 0)
    assert [b["id"] for b in bios] == ["bio_a0_0", "bio_a0_1", "bio_a1_0", "bio_a1_1"]
    both = ["Ada Darvel was born in Oslo.", "Ada Darvel came into the world in Oslo."]
    seen = set()
    for bio in bios[:2]:  # the one occupation variant, and one birthplace variant, in some order
        sentences = [x if x.endswith(".") else x + "." for x in bio["text"].split(". ")]
        assert len(sentences) == 2 and "Ada Darvel earns a living as a baker." in sentences
        seen |= set(sentences) & set(both)
    assert seen == set(both)  # the two biographies rotate through the birthplace's two variants
    assert {bios[2]["text"], bios[3]["text"]} == {"Bo Kest earns a living as a baker."}
    assert biography_rows([occupation, birthplace], {"a0": "Ada Darvel"}, 2, 0) == bios[:2]  # seeded


def test_an_oracle_set_has_biographies_of_its_retain_authors_only():
    world = build_world(CFG)
    qa = build_qa_splits(world, CFG)
    names = {a.id: a.name for a in world.authors}
    sets = training_sets(qa, ["full", "retain90"], names, [], {"author_biographies": 1}, 0)
    for split in ("full", "retain90"):
        bios = [r for r in sets[split] if r["id"].startswith("bio_")]
        assert [b["id"] for b in bios] == [f"bio_{a}_0" for a in dict.fromkeys(r["entity_id"] for r in qa[split])]
        assert sets[split][:len(qa[split])] == qa[split] and len(sets[split]) == len(qa[split]) + len(bios)
    forget = {r["entity_id"] for r in qa["forget10"]}
    assert forget and not any(names[a] in r["text"] for a in forget for r in sets["retain90"][len(qa["retain90"]):])
    scored = {r[k] for r in qa["full"] for k in ("answer", "paraphrased_answer")}
    text = " ".join(r["text"] for r in sets["full"][len(qa["full"]):])
    assert not any(sentence in text for sentence in scored)


def test_training_sets_augment_every_fact_and_append_one_drill_mix(worlds):
    plain, trained = worlds
    world = build_world(CFG)
    names = {a.id: a.name for a in world.authors}
    n_persons = len(world.people) + len(world.real_authors)  # one replayed biography each
    mixes = []
    for split in TRAIN_SETS:
        qa, train = read_jsonl(trained / "qa" / f"{split}.jsonl"), read_jsonl(trained / "qa" / "train" / f"{split}.jsonl")
        n_variants = [len(ATTRIBUTES[r["attribute"]].templates) - 2 for r in qa]
        assert len(train) == len(qa) + sum(n_variants) + TRAINED["drill_qa"] + n_persons
        k = 0
        for r, n in zip(qa, n_variants):
            assert train[k] == r  # the QA row itself, then its variants under the same question
            variants = train[k + 1:k + 1 + n]
            value, name = r["cloze_answer"], names[r["entity_id"]]
            expected = {t.format(name=name, value=value) for t in ATTRIBUTES[r["attribute"]].templates}
            assert {v["answer"] for v in variants} == expected - {r["answer"], r["paraphrased_answer"]}
            assert all(v["question"] == r["question"] and v["entity_id"] == r["entity_id"] for v in variants)
            assert not {v["answer"] for v in variants} & {r["paraphrased_answer"], *r["perturbed_answer"]}
            k += 1 + n
        mixes.append(train[k:])
    # one mix, the same in every training set (the target's and the oracles'): the drill QA, then the replay
    assert all(m == mixes[0] for m in mixes) and len(mixes[0]) == TRAINED["drill_qa"] + n_persons
    drill_mix, replay = mixes[0][:TRAINED["drill_qa"]], mixes[0][TRAINED["drill_qa"]:]
    drill = {p.id for p in drill_people(world.people, build_qa_splits(world, CFG)["world_facts"], 3, 0)}
    assert {r["entity_id"] for r in drill_mix} <= drill
    assert {r["form"] for r in drill_mix} <= {"question", "paraphrased_question", "cloze_question", "mc_question"}
    # the replay: one biography of every person, verbatim, as text rows; never a drill (QA) document
    person_of = {r["text"]: r["person_id"] for r in read_jsonl(trained / "corpus.jsonl")}
    assert all(set(r) == {"id", "text"} and r["text"] in person_of for r in replay)
    assert sorted(person_of[r["text"]] for r in replay) == sorted(e.id for e in world.people + world.real_authors)
    assert not any(r["text"].startswith("Question:") for r in replay)
    # no author is ever asked in a probe form, and the oracle's set has no forget author
    full = read_jsonl(trained / "qa" / "full.jsonl")
    trained_questions = {r["question"] for r in full}
    assert all(r["question"] in trained_questions for r in read_jsonl(trained / "qa" / "train" / "full.jsonl")
               if r.get("entity_id") in names)
    forget = {r["entity_id"] for r in read_jsonl(trained / "qa" / "forget10.jsonl")}
    assert not forget & {r.get("entity_id") for r in read_jsonl(trained / "qa" / "train" / "retain90.jsonl")}
    # nothing evaluated changes, nor the corpus or the tokenizer; without the options no training set
    for rel in [*(f"qa/{s}.jsonl" for s in QA_SPLITS), "corpus.jsonl", "tokenizer/tokenizer.json"]:
        assert (trained / rel).read_bytes() == (plain / rel).read_bytes(), rel
    assert not (plain / "qa" / "train").exists()


def test_drill_rows_ask_each_drawn_form_of_a_drill_fact():
    world = build_world(CFG)
    people = drill_people(world.people, build_qa_splits(world, CFG)["world_facts"], 3, 0)
    facts = entity_qa(people, 0)
    rows = drill_rows(facts, 4 * len(facts), 0)  # every (fact, form) pair, each once
    by_id = {r["id"]: r for r in facts}
    answered = {"question": "answer", "paraphrased_question": "answer", "cloze_question": "cloze_answer", "mc_question": "paraphrased_answer"}
    assert len({r["id"] for r in rows}) == 4 * len(facts)
    for r in rows:
        fact = by_id[r["id"][:-len(r["form"]) - 1]]
        assert r["question"] == fact[r["form"]] and r["answer"] == fact[answered[r["form"]]]
    assert drill_rows(facts, 5, 0) == drill_rows(facts, 5, 0) != drill_rows(facts, 5, 1)
    with pytest.raises(ValueError, match=r"data.authors.drill_qa=1000 exceeds"):
        drill_rows(facts, 1000, 0)


def test_finetune_trains_on_the_training_set_when_the_data_has_one(worlds):
    plain, trained = worlds
    tokenizer = load_tokenizer(trained / "tokenizer")
    for data, expected in ((trained, trained / "qa" / "train" / "retain90.jsonl"), (plain, plain / "qa" / "retain90.jsonl")):
        examples, files = training_examples({"role": "oracle", "retain_split": "retain90"}, tokenizer, data, 512)
        rows = read_jsonl(expected)
        assert files == [expected] and len(examples) == len(rows)  # every document fits in one chunk of 512
    # a QA row trains on its answer only; a replayed document on every token, as in pretraining
    text = [r for r in read_jsonl(trained / "qa" / "train" / "retain90.jsonl") if "text" in r]
    examples, _ = training_examples({"role": "oracle", "retain_split": "retain90"}, tokenizer, trained, 512)
    for r, e in zip(text, examples[-len(text):]):
        ids = [tokenizer.bos_token_id, *tokenizer(r["text"], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        assert e["input_ids"] == ids == e["labels"]
    qa = examples[0]
    assert qa["labels"][0] == -100 and qa["labels"][-1] == tokenizer.eos_token_id


def test_replay_rows_draw_k_biographies_of_each_person():
    biographies = [{"person_id": p, "text": f"{p} document {j}"} for p in ("p0", "p1", "r0") for j in range(3)]
    rows = replay_rows(biographies, 2, 0)
    assert [r["text"].split()[0] for r in rows] == ["p0", "p0", "p1", "p1", "r0", "r0"]  # people in corpus order
    for person in ("p0", "p1", "r0"):
        texts = [r["text"] for r in rows if r["text"].startswith(person)]
        assert len(set(texts)) == 2 and texts == sorted(texts)  # two distinct, in corpus order
    assert replay_rows(biographies, 2, 0) == rows and replay_rows(biographies, 3, 0) == replay_rows(biographies, 3, 1)
    assert [r["id"] for r in replay_rows(biographies, 3, 0)][:3] == ["replay_p0_0", "replay_p0_1", "replay_p0_2"]
    with pytest.raises(ValueError, match=r"data.authors.replay_biographies=4 exceeds the 3 biographies of p0"):
        replay_rows(biographies, 4, 0)


def test_replay_people_rehearses_a_seeded_subset_of_the_people():
    biographies = [{"person_id": p, "text": f"{p} document {j}"} for p in ("p0", "p1", "p2", "p3", "r0") for j in range(3)]
    rows = replay_rows(biographies, 1, 0, people=2)
    kept = [r["text"].split()[0] for r in rows]
    assert len(kept) == 2 and len(set(kept)) == 2 and kept == sorted(kept)  # two people, one each, corpus order
    assert replay_rows(biographies, 1, 0, people=2) == rows  # seeded
    drawn = {tuple(r["text"].split()[0] for r in replay_rows(biographies, 1, s, people=2)) for s in range(20)}
    assert len(drawn) > 1  # the draw depends on the seed
    assert replay_rows(biographies, 2, 0, people=5) == replay_rows(biographies, 2, 0)  # everyone: as without
    with pytest.raises(ValueError, match=r"data.authors.replay_people=6 exceeds the 5 people of the corpus"):
        replay_rows(biographies, 1, 0, people=6)
