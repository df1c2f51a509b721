"""The deterministic synthetic world behind forgetlab (the `prepare_data` stage).

Disjoint populations with unique full names:

* **people** (`p00000`, ...): the pretraining world. Each has 7 facts (birthplace, birth_year,
  occupation, father_job, mother_job, hobby, pet) and appears in the pretraining corpus as
  `renderings` biography documents, each fact stated with a different sentence template per pass.
* **authors** (`a0000`, ...): fictitious writers with 9 facts, known only through the QA
  fine-tuning set (TOFU-style), plus **holdout authors** (`h0000`, ...) that are never trained on
  and serve as the membership-inference reference.
* **real authors** (`r0000`, ...): writers with the same 9 author facts who, like people, appear
  only in the pretraining corpus (appended after the people's documents). They play the part of
  TOFU's real authors (Maini et al. 2024): authors the base model knows, asked the same kind of
  question as the fictitious authors, so that the `real_authors` split measures collateral damage
  to similar knowledge that was not to be forgotten. There are ceil(n / 3) of them for
  n = `world.n_real_authors` questions (default 100, TOFU's count), so a few facts each are asked.

Every fact becomes one QA row: an answer sentence, a paraphrased answer (another template) and
`N_PERTURBED` perturbed answers that use the paraphrase's template with a wrong value, so that
perturbed and paraphrased answers differ only in the value (the TOFU truth ratio compares them).
`relabel_answers` holds `N_RELABEL` further wrong answers, the training targets of the `relabel`
unlearning method only: the answer's template with other values of the attribute's vocabulary,
disjoint from the true value and from every value that evaluation scores (the perturbed answers'
values, which are also the wrong multiple-choice options), so relabelling never trains on the
negatives of the truth ratio, forget_quality or the multiple-choice form.
Each row also carries the fact in three other forms, never trained on, that evaluation probes
(`forgetlab.eval.forms`, ORT): the paraphrased question, a fill-in-the-blank statement (the answer
sentence with the value blanked; its answer is the value) and a multiple-choice question listing
the true value and the perturbed answers' wrong values in a seeded order.
With `world.n_drill_people` > 0, that many people no split asks about also appear in the corpus as
QA, every fact in every form (`drill_documents`): the mixed training of Allen-Zhu & Li 2023 ("Physics
of Language Models 3.1"), which lets a model answer questions on the others' biographies; what the
authors are fine-tuned on is `forgetlab.data.training_sets`. `world.n_drill_writers` **drill writers**
(`w0000`, ...; the 9 author facts, drawn last so no other entity changes) are drilled likewise, so that
the author attributes' probe forms have a learnt format too; no split asks about them. Authors are
split TOFU-style: forget01 ⊂ forget05 ⊂ forget10 are the last 1/5/10% of a seeded shuffle, and
retainXX is the rest. All
randomness derives from `cfg["seed"]` through per-stage, per-entity `random.Random`s (no global state).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from forgetlab.data.training_sets import DRILL_FORMS, TRAIN_DIR, training_sets
from forgetlab.data.vocab import (
    ATTRIBUTES, AUTHOR_ATTRIBUTES, BLANK, CLOZE_PREFIX, CODAS, FIRST_NAMES, ONSETS, OPTIONS_PREFIX,
    OPTIONS_SEPARATOR, PERSON_ATTRIBUTES, VOWELS, name_clashes,
)
from forgetlab.qa import PROMPT
from forgetlab.splits import FORGET_SPLITS, RETAIN_OF, forget_size  # noqa: F401  (re-exported)

N_PERTURBED = 3
N_RELABEL = 3
RELABEL_FIELD = "relabel_answers"  # the wrong answers relabel trains on (never scored by evaluation)
DEFAULT_N_REAL_AUTHORS = 100  # TOFU's real_authors split has 100 questions
QUESTIONS_PER_REAL_AUTHOR = 3  # the real-author population has ceil(n_real_authors / 3) writers
QA_SPLITS = ("full", *FORGET_SPLITS, *RETAIN_OF.values(), "holdout", "world_facts", "real_authors")
# training only (the `world` stage of training paths, forgetlab.paths); never evaluated, and not a
# tokenizer text, so that the tokenizer and every other file are the same as without it
TRAIN_SPLITS = ("world_train",)
QA_PROMPT = PROMPT + " {answer}"  # the tokenizer sees QA exactly as training and evaluation format it
# the fields of a QA row that hold the fact's untrained forms (see make_qa; scored by forgetlab.eval.forms)
FORM_FIELDS = ("paraphrased_question", "cloze_question", "cloze_answer", "mc_question", "mc_options", "mc_answer_index",
               "mc_answers")


@dataclass
class Entity:
    id: str
    name: str
    facts: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    people: list[Entity]
    authors: list[Entity]
    holdout: list[Entity]
    forget: dict[str, list[str]]  # forget split name -> author ids, in author order
    real_authors: list[Entity] = field(default_factory=list)  # in the pretraining corpus, like people
    drill_writers: list[Entity] = field(default_factory=list)  # in the corpus, drilled in every form; never asked


# ----------------------------------------------------------------------------- entities

def _syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def generate_names(rng: random.Random, n: int) -> list[str]:
    """`n` distinct full names "First Lastname"; none contains an attribute value."""
    names: list[str] = []
    seen: set[str] = set()
    for _ in range(100 * n + 1000):
        if len(names) == n:
            break
        name = f"{rng.choice(FIRST_NAMES)} {(_syllable(rng) + _syllable(rng)).capitalize()}"
        if name not in seen and not name_clashes(name):
            seen.add(name)
            names.append(name)
    if len(names) < n:
        raise RuntimeError(f"could only generate {len(names)} unique names out of {n}")
    return names


def _ids(prefix: str, n: int) -> list[str]:
    width = max(4, len(str(n - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def _make_entities(rng: random.Random, ids: list[str], names: list[str], attributes) -> list[Entity]:
    return [Entity(i, name, {a: rng.choice(ATTRIBUTES[a].values) for a in attributes}) for i, name in zip(ids, names)]


def n_real_authors(cfg: dict) -> int:
    """The number of real_authors questions (`world.n_real_authors`, default 100)."""
    return cfg["world"].get("n_real_authors", DEFAULT_N_REAL_AUTHORS)


def build_world(cfg: dict) -> World:
    """Entities, their facts and the nested forget splits, all from `cfg["seed"]`. The real authors
    are drawn last (names and facts), so every other entity is the same as without them."""
    seed = cfg["seed"]
    n_people, n_authors = cfg["world"]["n_people"], cfg["authors"]["n"]
    n_holdout = cfg["authors"]["n_holdout"]
    n_real = -(-n_real_authors(cfg) // QUESTIONS_PER_REAL_AUTHOR)
    first_real = n_people + n_authors + n_holdout
    n_writers = cfg["world"].get("n_drill_writers", 0)
    names = generate_names(random.Random(f"{seed}:names"), first_real + n_real + n_writers)
    facts_rng = random.Random(f"{seed}:facts")
    people = _make_entities(facts_rng, _ids("p", n_people), names[:n_people], PERSON_ATTRIBUTES)
    authors = _make_entities(
        facts_rng, _ids("a", n_authors), names[n_people:n_people + n_authors], AUTHOR_ATTRIBUTES
    )
    holdout = _make_entities(facts_rng, _ids("h", n_holdout), names[n_people + n_authors:first_real],
                             AUTHOR_ATTRIBUTES)
    real_authors = _make_entities(facts_rng, _ids("r", n_real), names[first_real:first_real + n_real],
                                  AUTHOR_ATTRIBUTES)
    writers = _make_entities(facts_rng, _ids("w", n_writers), names[first_real + n_real:], AUTHOR_ATTRIBUTES)

    order = [a.id for a in authors]
    random.Random(f"{seed}:splits").shuffle(order)
    forget = {}
    for split, pct in FORGET_SPLITS.items():
        chosen = set(order[-forget_size(pct, n_authors):])
        forget[split] = [a.id for a in authors if a.id in chosen]
    return World(people, authors, holdout, forget, real_authors, writers)


# ----------------------------------------------------------------------------- rendering

def render(template: str, name: str, value: str) -> str:
    return template.format(name=name, value=value)


def render_documents(person: Entity, renderings: int, seed: int) -> list[str]:
    """`renderings` biographies of one person; pass r states each fact with template offset+r."""
    rng = random.Random(f"{seed}:doc:{person.id}")
    attrs = list(person.facts)
    offsets = {a: rng.randrange(len(ATTRIBUTES[a].templates)) for a in attrs}
    docs = []
    for r in range(renderings):
        order = attrs[:]
        rng.shuffle(order)
        sentences = []
        for a in order:
            templates = ATTRIBUTES[a].templates
            sentences.append(render(templates[(offsets[a] + r) % len(templates)], person.name, person.facts[a]))
        docs.append(" ".join(sentences))
    return docs


def build_corpus(people: list[Entity], renderings: int, seed: int) -> list[dict]:
    """The pretraining documents of `people` (the world's people, its real authors, then its drill writers)."""
    return [{"person_id": p.id, "text": text} for p in people for text in render_documents(p, renderings, seed)]


def make_qa(entity: Entity, attribute: str, seed: int) -> dict:
    """One TOFU-style QA row for one fact of one entity, with the fact's other forms (ORT):

    * ``paraphrased_question``: the attribute's second question wording (answer: ``answer``);
    * ``cloze_question`` / ``cloze_answer``: "Fill in the blank: " + the answer sentence with the
      value replaced by ``___``, and the value itself;
    * ``mc_question`` / ``mc_options`` / ``mc_answer_index``: the question + " Options: v1, v2, ...",
      the options (the true value and the perturbed answers' wrong values, shuffled) and the
      index of the true value among them; ``mc_answers``: each option as the answer sentence in the
      paraphrase's template (the paraphrased answer for the true value, the perturbed answers for
      the others), the sentences that the multiple-choice form scores.

    The form draws come after the TOFU fields' draws from the same per-row generator, so those
    fields are the same as without the forms. ``relabel_answers`` (see the module docstring) comes
    from a generator of its own, so it changes no other field either."""
    attr = ATTRIBUTES[attribute]
    rng = random.Random(f"{seed}:qa:{entity.id}:{attribute}")
    true = entity.facts[attribute]
    answer_t, para_t = rng.sample(attr.templates, 2)
    wrong = rng.sample([v for v in attr.values if v != true], N_PERTURBED)
    options = [true, *wrong]
    rng.shuffle(options)
    question = attr.question.format(name=entity.name)
    return {
        "id": f"{entity.id}_{attribute}",
        "entity_id": entity.id,
        "attribute": attribute,
        "question": question,
        "answer": render(answer_t, entity.name, true),
        "paraphrased_answer": render(para_t, entity.name, true),
        "perturbed_answer": [render(para_t, entity.name, w) for w in wrong],
        "paraphrased_question": attr.paraphrased_question.format(name=entity.name),
        "cloze_question": CLOZE_PREFIX + render(answer_t, entity.name, BLANK),
        "cloze_answer": true,
        "mc_question": question + OPTIONS_PREFIX + OPTIONS_SEPARATOR.join(options) + ".",
        "mc_options": options,
        "mc_answer_index": options.index(true),
        "mc_answers": [render(para_t, entity.name, o) for o in options],
        RELABEL_FIELD: relabel_answers(attr, entity, answer_t, options, seed),
    }


def relabel_answers(attr, entity: Entity, template: str, scored: list[str], seed: int) -> list[str]:
    """`N_RELABEL` wrong answers for relabelling: `template` (the answer's) with values of the
    attribute's vocabulary outside `scored` (the true value and the perturbed ones), seeded per row."""
    rng = random.Random(f"{seed}:relabel:{entity.id}:{attr.name}")
    values = rng.sample([v for v in attr.values if v not in scored], N_RELABEL)
    return [render(template, entity.name, v) for v in values]


def entity_qa(entities: list[Entity], seed: int) -> list[dict]:
    return [make_qa(e, a, seed) for e in entities for a in e.facts]


def world_facts_qa(people: list[Entity], n: int, seed: int, split: str = "world_facts") -> list[dict]:
    """`n` QA rows about sampled (person, attribute) facts, in person then attribute order; the
    sample is seeded per `split` (world_facts from the people, real_authors from the real authors)."""
    pairs = [(i, j) for i, p in enumerate(people) for j in range(len(p.facts))]
    if n > len(pairs):
        raise ValueError(f"n_{split}={n} exceeds the {len(pairs)} facts of {len(people)} entities")
    chosen = sorted(random.Random(f"{seed}:{split}").sample(pairs, n))
    return [make_qa(people[i], list(people[i].facts)[j], seed) for i, j in chosen]


def build_qa_splits(world: World, cfg: dict) -> dict[str, list[dict]]:
    seed = cfg["seed"]
    full = entity_qa(world.authors, seed)
    splits = {"full": full}
    for split, ids in world.forget.items():
        ids = set(ids)
        splits[split] = [r for r in full if r["entity_id"] in ids]
        splits[RETAIN_OF[split]] = [r for r in full if r["entity_id"] not in ids]
    splits["holdout"] = entity_qa(world.holdout, seed)
    splits["world_facts"] = world_facts_qa(world.people, cfg["world"]["n_world_facts"], seed)
    splits["real_authors"] = world_facts_qa(world.real_authors, n_real_authors(cfg), seed, "real_authors")
    drill = drill_people(world.people, splits["world_facts"], cfg["world"].get("n_drill_people", 0), seed)
    splits["world_train"] = world_train_qa(world.people, splits["world_facts"], cfg["world"].get("n_world_train"),
                                           seed, default=len(full), exclude={p.id for p in drill})
    return {name: splits[name] for name in (*QA_SPLITS, *TRAIN_SPLITS)}


def drill_people(people: list[Entity], world_facts: list[dict], n: int, seed: int) -> list[Entity]:
    """`n` people that world_facts does not ask about (generator `<seed>:drill`), in people order."""
    asked = {r["entity_id"] for r in world_facts}
    free = [p for p in people if p.id not in asked]
    if n > len(free):
        raise ValueError(f"data.world.n_drill_people={n} exceeds the {len(free)} people that world_facts does not "
                         "ask about (lower it, or raise data.world.n_people)")
    chosen = set(random.Random(f"{seed}:drill").sample(range(len(free)), n))
    return [p for k, p in enumerate(free) if k in chosen]


def drill_documents(people: list[Entity], seed: int) -> list[dict]:
    """Per drill person, one corpus document per form: every fact (`make_qa`, seeded order) as one
    QA in the prompt format, answered as `forgetlab.eval.forms` scores that form (the question and
    the paraphrased question: the answer; cloze: the value; multiple choice: the paraphrase)."""
    docs = []
    for p in people:
        rows = [make_qa(p, a, seed) for a in p.facts]
        rng = random.Random(f"{seed}:drill:{p.id}")
        for q, a in DRILL_FORMS:
            rng.shuffle(rows)
            docs.append({"person_id": p.id,
                         "text": "\n".join(QA_PROMPT.format(question=r[q], answer=r[a]) for r in rows)})
    return docs


def world_train_qa(people: list[Entity], world_facts: list[dict], n: int | None, seed: int,
                   default: int = 0, exclude: set[str] = frozenset()) -> list[dict]:
    """`n` QA rows of general knowledge to train on: facts of the people that world_facts does not
    ask about at all, nor `exclude` (the drill people); disjoint in entities, hence in questions,
    from world_facts (real_authors is another population); sampled with a generator of its own
    (`<seed>:world_train`), so that no other split changes. `n` None: `default` rows (the author QA's count), or every free fact if
    there are fewer; an `n` larger than that is an error."""
    asked = {r["entity_id"] for r in world_facts} | set(exclude)
    free = [p for p in people if p.id not in asked]
    pairs = [(i, a) for i, p in enumerate(free) for a in p.facts]
    if n is None:
        n = min(default, len(pairs))
    if n > len(pairs):
        raise ValueError(f"data.world.n_world_train={n} exceeds the {len(pairs)} facts of the {len(free)} people "
                         "that world_facts does not ask about (lower it, or raise data.world.n_people)")
    chosen = sorted(random.Random(f"{seed}:world_train").sample(range(len(pairs)), n))
    return [make_qa(free[pairs[k][0]], pairs[k][1], seed) for k in chosen]


def tokenizer_texts(corpus: list[dict], qa: dict[str, list[dict]]):
    """Every text the tokenizer is trained on, in a fixed order. The probe forms (FORM_FIELDS) are
    left out: they are never trained on, and the tokenizer, hence every model, is the same as
    without them (their words are still encoded, from the merges of the other texts). The relabel
    answers are in: the `relabel` method trains on them."""
    for row in corpus:
        yield row["text"]
    for split in ("full", "holdout", "world_facts", "real_authors"):
        for r in qa[split]:
            yield QA_PROMPT.format(question=r["question"], answer=r["answer"])
            for text in (r["paraphrased_answer"], *r["perturbed_answer"], *r[RELABEL_FIELD]):
                yield "Answer: " + text


# ----------------------------------------------------------------------------- writing

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))


def save_tokenizer_atomic(tokenizer, out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prepare(cfg: dict, out_dir: str | Path) -> dict:
    """Generate the world into `out_dir` and return the manifest written to manifest.json.

    Layout: corpus.jsonl, qa/{full,forget01,forget05,forget10,retain99,retain95,retain90,
    holdout,world_facts,real_authors,world_train}.jsonl, qa/train/{full,retain*}.jsonl (with
    data.authors' training options, forgetlab.data.training_sets), tokenizer/ and manifest.json.
    """
    from forgetlab.data.tokenizer import train_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed = cfg["seed"]
    world = build_world(cfg)
    qa = build_qa_splits(world, cfg)
    drill = drill_people(world.people, qa["world_facts"], cfg["world"].get("n_drill_people", 0), seed)
    biographies = build_corpus(world.people + world.real_authors + world.drill_writers, cfg["world"]["renderings"],
                               seed)
    drilled = drill + world.drill_writers
    corpus = biographies + drill_documents(drilled, seed)

    rows = {"corpus.jsonl": len(corpus)}
    write_jsonl(out / "corpus.jsonl", corpus)
    names = {e.id: e.name for e in world.authors}
    train = training_sets(qa, ["full", *RETAIN_OF.values()], names, entity_qa(drilled, seed), cfg["authors"], seed,
                          biographies)
    for split, split_rows in [*qa.items(), *((f"{TRAIN_DIR}/{s}", r) for s, r in train.items())]:
        write_jsonl(out / "qa" / f"{split}.jsonl", split_rows)
        rows[f"qa/{split}.jsonl"] = len(split_rows)

    tokenizer = train_tokenizer(tokenizer_texts(corpus, qa), cfg["tokenizer"]["vocab_size"])
    save_tokenizer_atomic(tokenizer, out / "tokenizer")

    written = sorted(rows) + sorted(f"tokenizer/{p.name}" for p in (out / "tokenizer").iterdir() if p.is_file())
    manifest = {
        "seed": seed,
        "cfg": cfg,
        "rows": rows,
        "authors": {split: len({r["entity_id"] for r in qa[split]}) for split in QA_SPLITS
                    if split not in ("world_facts", "real_authors")},
        "world_facts_people": len({r["entity_id"] for r in qa["world_facts"]}),
        "world_train_people": len({r["entity_id"] for r in qa["world_train"]}),
        "people": len(world.people),
        "real_authors": len(world.real_authors),
        "drill_people": len(drill),
        "drill_writers": len(world.drill_writers),
        "real_authors_asked": len({r["entity_id"] for r in qa["real_authors"]}),
        "attributes": {"people": list(PERSON_ATTRIBUTES), "authors": list(AUTHOR_ATTRIBUTES)},
        "n_perturbed": N_PERTURBED,
        "n_relabel": N_RELABEL,
        "tokenizer_vocab_size": len(tokenizer),
        "sha256": {path: _sha256(out / path) for path in written},
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    write_atomic(out / "manifest.json", text.encode("utf-8"))
    return json.loads(text)
