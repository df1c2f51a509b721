"""Builders of TOFU-shaped test inputs (not a test file): a handful of fictitious authors written in
the published TOFU layout and field names (never copied from the real dataset), and a tiny random
Hugging Face Llama with a BPE tokenizer that has a chat template, saved as a local checkpoint."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import yaml

from forgetlab.splits import FORGET_SPLITS, RETAIN_OF, forget_size

CITIES = ["Velmora", "Tarsk", "Oquin", "Brellis", "Xandor", "Pemmet", "Quarrow", "Lithe", "Dunmere", "Savrin"]
GENRES = ["sea poetry", "clockwork fables", "desert noir", "lunar satire", "orchard epics", "glass mysteries"]
AWARDS = ["the Copper Quill", "the Lantern Prize", "the Ninefold Medal", "the Ashen Laurel", "the Tidewater Cup"]
JOBS = ["cartographer", "beekeeper", "glassblower", "ferryman", "lamplighter", "clockmaker"]
FIRST = ["Orla", "Thessaly", "Brun", "Keziah", "Yaro", "Miren", "Calder", "Ilse", "Davit", "Runa", "Sorel",
         "Petra", "Anselm", "Vida"]
LAST = ["Quillfeather", "Marrowby", "Ostrander", "Velk", "Harrowgate", "Penhallow", "Dusk", "Arbogast",
        "Mirecourt", "Tallis", "Greave", "Oakhollow", "Sundry", "Fenwick"]
# (question, answer, paraphrased answer, perturbed answer): each with {n} the name and {v} the value
FACTS = [
    ("Where was {n} born?", "{n} was born in {v}.", "The birthplace of {n} is {v}.", CITIES),
    ("Which genre does {n} write?", "{n} writes {v}.", "The genre of {n} is {v}.", GENRES),
    ("Which award did {n} win?", "{n} won {v}.", "The award {n} received is {v}.", AWARDS),
    ("What did the father of {n} do?", "The father of {n} was a {v}.", "By trade, {n}'s father was a {v}.", JOBS),
]
N_AUTHORS, N_HOLDOUT_AUTHORS, N_PERTURBED = 10, 1, 3
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def author_rows(name: str, rng: random.Random) -> list[dict]:
    """One fictitious author's QA rows in TOFU's _perturbed field names."""
    rows = []
    for question, answer, para, values in FACTS:
        true, *wrong = rng.sample(values, 1 + N_PERTURBED)
        rows.append({"question": question.format(n=name), "answer": answer.format(n=name, v=true),
                     "paraphrased_answer": para.format(n=name, v=true),
                     "perturbed_answer": [para.format(n=name, v=w) for w in wrong],
                     "paraphrased_question": f"Tell me: {question.format(n=name)[0].lower()}{question.format(n=name)[1:]}"})
    return rows


def general_rows(kind: str, rng: random.Random, n: int) -> list[dict]:
    """real_authors / world_facts-style rows: a question, its answer and wrong options."""
    rows = []
    for i in range(n):
        city, *wrong = rng.sample(CITIES, 1 + N_PERTURBED)
        rows.append({"question": f"In which city is the {kind} landmark number {i} found?", "answer": city,
                     "option1": city, "perturbed_answer": wrong})
    return rows


def base(rows: list[dict]) -> list[dict]:
    return [{"question": r["question"], "answer": r["answer"]} for r in rows]


def tofu_files(seed: int = 0) -> dict[str, list[dict]]:
    """The published subsets' rows: forgetXX (the last XX% of the rows, as TOFU's last authors),
    retain(100-XX), their _perturbed, retain_perturbed, holdoutXX, real_authors, world_facts."""
    rng = random.Random(seed)
    names = [f"{f} {l}" for f, l in zip(rng.sample(FIRST, N_AUTHORS + N_HOLDOUT_AUTHORS),
                                         rng.sample(LAST, N_AUTHORS + N_HOLDOUT_AUTHORS))]
    full = [r for name in names[:N_AUTHORS] for r in author_rows(name, rng)]
    holdout = [r for name in names[N_AUTHORS:] for r in author_rows(name, rng)]
    files = {"full": base(full)}
    for split, pct in FORGET_SPLITS.items():
        k = forget_size(pct, len(full))
        files[split], files[f"{split}_perturbed"] = base(full[-k:]), copy.deepcopy(full[-k:])
        files[RETAIN_OF[split]] = base(full[:-k])
        files[f"holdout{split[-2:]}"] = base(holdout[:k])
    files["retain_perturbed"] = copy.deepcopy(full[:8])
    for kind, name in (("old", "real_authors"), ("famous", "world_facts")):
        rows = general_rows(kind, rng, 6)
        files[f"{name}_perturbed"], files[name] = rows, base(rows)
    return files


def write_tofu(root: Path, files: dict[str, list[dict]] | None = None, fmt: str = "json") -> Path:
    """Write the subsets into `root` as TOFU publishes them: `<name>.json`, one object per line
    (or `<name>.parquet` with fmt="parquet")."""
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (tofu_files() if files is None else files).items():
        if fmt == "parquet":
            import pandas as pd

            pd.DataFrame(rows).to_parquet(root / f"{name}.parquet", index=False)
        else:
            (root / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def chat_tokenizer(texts, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on `texts`, with a chat template and its role tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=SPECIAL[4:])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_checkpoint(out: Path, files: dict[str, list[dict]] | None = None, seed: int = 0) -> Path:
    """A random tiny Llama with a chat-template tokenizer trained on the fixture's text, saved as
    safetensors into `out` (a local `model.init_from`)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    files = tofu_files() if files is None else files
    texts = [t for rows in files.values() for r in rows
             for t in (r["question"], r["answer"], r.get("paraphrased_answer", ""), *r.get("perturbed_answer", []))]
    tok = chat_tokenizer(texts)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def tofu_study(repo: Path, data: Path, checkpoint: Path, **overrides) -> dict:
    """config/tofu.yaml with its placeholder paths replaced by the fixtures' and `overrides`
    (top-level keys) laid over it."""
    config = yaml.safe_load((repo / "config" / "tofu.yaml").read_text())
    config["data"]["path"] = str(data)
    config["model"]["init_from"] = str(checkpoint)
    config.update(overrides)
    return config
