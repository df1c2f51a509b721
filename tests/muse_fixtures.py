"""Builders of MUSE test fixtures, generated here and never copied from real data: a handful of
fictitious news documents in the exact layout and field names of a local MUSE corpus
(forgetlab.data.muse), a tiny random-weight Hugging Face Llama with its own small BPE tokenizer
(the `model.init_from` checkpoint), and a muse study config over both. Used by the test files;
no test file imports another."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

TOWNS = ["Varnholt", "Quillmere", "Ostrabay", "Pellingford", "Drumcastle", "Yarrowdale", "Kestonbridge",
         "Thimblecombe", "Marrowgate", "Ashenfold", "Brindlewick", "Corvanley", "Elmsworth", "Frostcombe"]
EVENTS = ["opened a floating library", "held a lantern festival", "rebuilt its clock tower", "launched a ferry line",
          "won the regional rowing cup", "planted a cedar orchard", "restored the old mill", "hosted a kite fair"]
PEOPLE = ["Mayor Ilsa Brandt", "Councillor Tobin Reyes", "Dr Mara Quell", "Captain Odo Farrow",
          "Professor Lena Haskett", "Chef Ravi Mundell", "Warden Elsie Crane", "Inspector Hugo Stiles"]


def article(i: int) -> dict:
    """Fictitious news article i: a town, an event, a person, a year and a number."""
    rng = random.Random(i)
    town, event, person = TOWNS[i % len(TOWNS)], rng.choice(EVENTS), rng.choice(PEOPLE)
    year, count = 2030 + i % 7, rng.randint(12, 980)
    text = (f"{town} {event} on Tuesday. {person} said the project took {count} volunteers and "
            f"would be finished before {year}. Residents of {town} gathered by the harbour to watch, "
            f"and {person} thanked the volunteers for their patience.")
    question = f"Who spoke about the project in {town}?"
    return {"text": text, "town": town, "person": person, "question": question, "answer": person}


def corpus(n_forget: int = 4, n_retain1: int = 4, n_retain2: int = 3, n_holdout: int = 3) -> dict:
    """{(subset, split): rows} of a MUSE corpus with the published field names."""
    ids = iter(range(1000))
    raw = {split: [article(next(ids)) for _ in range(n)] for split, n in
           (("forget", n_forget), ("retain1", n_retain1), ("retain2", n_retain2), ("holdout", n_holdout))}
    data = {("raw", split): [{"text": a["text"]} for a in arts] for split, arts in raw.items()}
    data["knowmem", "forget_qa"] = [{"question": a["question"], "answer": a["answer"]} for a in raw["forget"]]
    data["knowmem", "retain_qa"] = [{"question": a["question"], "answer": a["answer"]} for a in raw["retain1"]]
    data["knowmem", "forget_qa_icl"] = data["knowmem", "forget_qa"][:1]
    data["knowmem", "retain_qa_icl"] = data["knowmem", "retain_qa"][:1]
    # verbmem: the first words of a forget article, and the rest as its ground truth
    data["verbmem", "forget"] = [{"prompt": " ".join(a["text"].split()[:8]), "gt": " ".join(a["text"].split()[8:])}
                                 for a in raw["forget"]]
    data["privleak", "forget"] = [{"text": a["text"]} for a in raw["forget"]]
    data["privleak", "retain"] = [{"text": a["text"]} for a in raw["retain1"]]
    data["privleak", "holdout"] = [{"text": a["text"]} for a in raw["holdout"]]
    return data


def write_rows(path: Path, rows: list, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path, index=False)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_corpus(root: Path, data: dict | None = None, fmt: str = "jsonl") -> Path:
    """A local MUSE corpus at `root`: <subset>/<split>.<fmt> for every (subset, split) of `data`."""
    for (subset, split), rows in (data or corpus()).items():
        write_rows(root / subset / f"{split}.{fmt}", rows, fmt)
    return root


def all_texts(data: dict) -> list[str]:
    return [v for rows in data.values() for r in rows for v in r.values()]


def tiny_llama(out: Path, texts: list[str], vocab_size: int = 400, seed: int = 0, max_positions: int = 512) -> Path:
    """A random-weight LlamaForCausalLM (2 layers, width 32) and a byte-level BPE tokenizer trained
    on `texts`, saved (safetensors) at `out`: what a muse study's model.init_from points at."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>", "<unk>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", clean_up_tokenization_spaces=False)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build(root: Path) -> tuple[Path, Path]:
    """A MUSE corpus and a tiny Llama under `root`: (data path, checkpoint path)."""
    data = corpus()
    return write_corpus(root / "muse-news", data), tiny_llama(root / "muse-target", all_texts(data))


def study_config(data_path: Path, init_from: Path, study: str = "muse_fixture") -> dict:
    """A muse study over the fixtures: the whole DAG in well under a minute on the CPU."""
    return {
        "study": study,
        "seeds": [0],
        "splits": ["forget"],
        "threads": {"pretrain": 1, "finetune": 1, "unlearn": 1, "evaluate": 1},
        "data": {"source": "muse", "path": str(data_path), "seed": 0},
        "model": {"init_from": str(init_from), "hidden_size": 32, "intermediate_size": 64,
                  "num_hidden_layers": 2, "num_attention_heads": 2},
        "pretrain": {"epochs": 1, "batch_size": 4, "lr": 1.0e-3},
        "finetune": {"epochs": 3, "batch_size": 4, "lr": 3.0e-3, "max_length": 32},
        "unlearn": {"epochs": 2, "batch_size": 4, "lr": 1.0e-4, "max_length": 32, "warmup_ratio": 0.0},
        "regularizers": {"none": [{"name": "none"}], "dropout": [{"name": "dropout", "attention": 0.1, "residual": 0.1}]},
        "methods": {"grad_ascent": {"name": "grad_ascent"}, "npo": {"name": "npo", "beta": 0.1, "gamma": 1.0, "alpha": 1.0}},
        "evaluate": {"batch_size": 8, "max_new_tokens": 8, "max_length": 64, "verbmem_max_new_tokens": 12,
                     "metrics": ["knowmem", "verbmem", "privleak", "privleak_min_k_plus_plus"]},
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
