"""The author QA as fine-tuning trains on it: `qa/train/<split>.jsonl` (full and every retain split).

Evaluation asks each author fact in its trained form (question -> answer sentence) and in untrained
probe forms (paraphrased question, fill-in-the-blank, multiple choice; `forgetlab.eval.forms`). A
tiny model fine-tuned on one answer sentence per fact learns that sentence rather than the fact:
in the default study before this module its multiple-choice accuracy on forget was 0.55 and its
fill-in-the-blank probability 1.5x the oracle's (docs/metrics.md#the-world-and-what-the-model-knows).
Four options of `data.authors` change what the target and the oracle train on, never what is evaluated:

* ``answer_variants: true``: every fact is trained in every answer template of its attribute but
  the paraphrase's (which the truth ratio, the paraphrased form and the multiple-choice form
  score), each under the trained question: the knowledge augmentation of Allen-Zhu & Li 2023
  ("Physics of Language Models 3.1": several renderings of a fact make it extractable in others).
* ``drill_qa: n``: `n` QA rows about the drill people (`forgetlab.data.world.drill_people`, whom the
  pretraining corpus already drills in every form) in the trained and the probe forms, answered as
  the corpus's drill documents answer them (`drill_documents`): question and paraphrased question ->
  answer, fill-in-the-blank -> value, multiple choice -> paraphrased answer; drawn with the
  generator `<seed>:drill_qa` and appended to every training set, the target's and the oracle's
  alike. Fine-tuning on answer sentences alone teaches that every answer is a sentence, and the
  bare-value fill-in-the-blank then scored the format, not the fact. No author is ever asked in a
  probe form.
* ``replay_biographies: k``: `k` biographies of every person of the pretraining corpus (the
  people and the real authors; each has `world.renderings` of them), drawn with the generator
  `<seed>:replay_biographies`, appended to every training set as text rows ({"id", "text"}: every
  token supervised, as in pretraining): rehearsal of the pretraining data (Robins 1995,
  "Catastrophic forgetting, rehearsal and pseudorehearsal"). Without it the tiny model's author
  fine-tuning wiped out what pretraining taught (world-facts multiple-choice accuracy 0.96 -> 0.37),
  so model utility's world terms sat at chance and utility rose while an unlearning run halved the
  retain probability (docs/metrics.md#the-world-and-what-the-model-knows). Every person is
  rehearsed alike, those whom world_facts and real_authors ask about among them; no QA of those
  splits is trained. ``replay_people: n`` rehearses a seeded uniform draw of `n` people only
  (generator `<seed>:replay_people`; default every one): the replayed text is a third of the
  fine-tuning tokens.

* ``author_biographies: k``: `k` biographies of every author of the training set (the target's:
  retain and forget; an oracle's: retain only), appended as text rows (`biography_rows`): every
  fact once, each in an answer variant, so never in the answer's sentence (the one the
  fill-in-the-blank form blanks) nor the paraphrase's. Fine-tuned on QA alone, an author's fact is
  learnt in the answer slot only, and the fill-in-the-blank form, which states the fact as a
  sentence before the answer, found the target barely above a guess (2.75x the oracle with the
  drill writers); the drill people are known from biographies, and the drill teaches to answer
  from what biographies taught, so the authors get biographies too (Allen-Zhu & Li 2023: a fact
  stored from biographies is extractable in the formats the drill taught).

Without any option no training set is written, and fine-tuning trains on `qa/<split>.jsonl` itself
(as for real TOFU data). Unlearning and evaluation always read `qa/<split>.jsonl`: an unlearning
request names the QA rows, not their augmentations.
"""

from __future__ import annotations

import random

from forgetlab.data.vocab import ATTRIBUTES

# the forms a drill QA takes, in the corpus's drill documents (forgetlab.data.world.drill_documents) and in
# the drill mix: (the row's field asked, the field answered, as forgetlab.eval.forms scores that form)
DRILL_FORMS = (("question", "answer"), ("paraphrased_question", "answer"), ("cloze_question", "cloze_answer"),
               ("mc_question", "paraphrased_answer"))
TRAIN_DIR = "train"  # qa/train/<split>.jsonl


def answer_variants(row: dict, name: str) -> list[str]:
    """The fact of `row` (about the entity called `name`) stated in every template of its attribute
    but the answer's and the paraphrase's, in template order."""
    value = row["cloze_answer"]
    scored = {row["answer"], row["paraphrased_answer"]}
    sentences = [t.format(name=name, value=value) for t in ATTRIBUTES[row["attribute"]].templates]
    return [s for s in sentences if s not in scored]


def with_variants(rows: list[dict], names: dict[str, str]) -> list[dict]:
    """Each row, followed by one copy per answer variant (the same question, id suffixed `_v<k>`)."""
    out = []
    for r in rows:
        out.append(r)
        for k, sentence in enumerate(answer_variants(r, names[r["entity_id"]]), start=1):
            out.append({**r, "id": f"{r['id']}_v{k}", "answer": sentence})
    return out


def drill_rows(drill_qa: list[dict], n: int, seed: int) -> list[dict]:
    """`n` rows drawn from every (drill QA row, probe form) pair (drill people and drill writers),
    each asked and answered in its form (field `form`: the question field); an `n` larger than the
    pairs is an error."""
    pairs = [(r, q, a) for r in drill_qa for q, a in DRILL_FORMS]
    if n > len(pairs):
        raise ValueError(f"data.authors.drill_qa={n} exceeds the {len(pairs)} (fact, form) pairs of the drill people "
                         "(lower it, or raise data.world.n_drill_people or data.world.n_drill_writers)")
    chosen = sorted(random.Random(f"{seed}:drill_qa").sample(range(len(pairs)), n))
    return [{"id": f"{r['id']}_{q}", "entity_id": r["entity_id"], "attribute": r["attribute"],
             "question": r[q], "answer": r[a], "form": q} for r, q, a in (pairs[k] for k in chosen)]


def replay_rows(biographies: list[dict], k: int, seed: int, people: int | None = None) -> list[dict]:
    """`k` of each person's biographies (corpus rows {"person_id", "text"}), people in corpus order,
    as text rows; a `k` larger than a person's biographies is an error. `people`: rehearse only
    that many people, a uniform draw (generator `<seed>:replay_people`, corpus order kept); more
    than the corpus has is an error."""
    by_person: dict[str, list[str]] = {}
    for row in biographies:
        by_person.setdefault(row["person_id"], []).append(row["text"])
    if people is not None:
        if people > len(by_person):
            raise ValueError(f"data.authors.replay_people={people} exceeds the {len(by_person)} people of the corpus")
        kept = set(random.Random(f"{seed}:replay_people").sample(sorted(by_person), people))
        by_person = {p: texts for p, texts in by_person.items() if p in kept}
    rng, rows = random.Random(f"{seed}:replay_biographies"), []
    for person, texts in by_person.items():
        if k > len(texts):
            raise ValueError(f"data.authors.replay_biographies={k} exceeds the {len(texts)} biographies of {person} "
                             "(data.world.renderings)")
        rows += [{"id": f"replay_{person}_{j}", "text": texts[j]} for j in sorted(rng.sample(range(len(texts)), k))]
    return rows


def biography_rows(rows: list[dict], names: dict[str, str], k: int, seed: int) -> list[dict]:
    """`k` biographies of every author of `rows` (authors in row order), as text rows: each states
    every fact of the author once, in an answer variant (never the answer's sentence, which the
    fill-in-the-blank blanks, nor the paraphrase's), rotating through an attribute's variants from a
    seeded offset, the facts in a seeded order (generator `<seed>:author_biographies:<entity>`)."""
    by_author: dict[str, list[dict]] = {}
    for r in rows:
        by_author.setdefault(r["entity_id"], []).append(r)
    out = []
    for entity, facts in by_author.items():
        rng = random.Random(f"{seed}:author_biographies:{entity}")
        variants = [answer_variants(r, names[entity]) for r in facts]
        offsets = [rng.randrange(len(v)) for v in variants]
        for j in range(k):
            order = list(range(len(facts)))
            rng.shuffle(order)
            text = " ".join(variants[i][(offsets[i] + j) % len(variants[i])] for i in order)
            out.append({"id": f"bio_{entity}_{j}", "text": text})
    return out


def training_sets(qa: dict[str, list[dict]], splits: list[str], names: dict[str, str], drill_qa: list[dict],
                  options: dict, seed: int, biographies: list[dict] = ()) -> dict[str, list[dict]]:
    """{split: training rows} for each of `splits` (full and the retain splits), or {} when no
    option is set. `names`: entity id -> name; `drill_qa`: every fact of the drill people (make_qa);
    `biographies`: the corpus's biographies (replay_biographies draws from them)."""
    variants, n = bool(options.get("answer_variants")), int(options.get("drill_qa") or 0)
    n_replay = int(options.get("replay_biographies") or 0)
    replay_people = options.get("replay_people")
    n_bio = int(options.get("author_biographies") or 0)
    if not variants and not n and not n_replay and not n_bio:
        return {}
    mix = (drill_rows(drill_qa, n, seed) if n else []) + (replay_rows(biographies, n_replay, seed, replay_people) if n_replay else [])
    return {split: (with_variants(qa[split], names) if variants else list(qa[split]))
            + (biography_rows(qa[split], names, n_bio, seed) if n_bio else []) + mix for split in splits}
