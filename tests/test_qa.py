"""Answer-only loss masking and padding of QA examples."""

from __future__ import annotations

import torch

from forgetlab.model import load_tokenizer
from forgetlab.qa import IGNORE, collate, encode_qa


def test_only_the_answer_and_eos_are_supervised(smoke_data):
    tok = load_tokenizer(smoke_data / "tokenizer")
    ex = encode_qa(tok, "Where was Ada Lind born?", "Ada Lind was born in Oslo.")
    supervised = [t for t in ex["labels"] if t != IGNORE]
    n_prompt = len(ex["labels"]) - len(supervised)
    assert ex["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert ex["input_ids"][0] == tok.bos_token_id
    assert supervised == ex["input_ids"][n_prompt:]
    assert supervised[-1] == tok.eos_token_id
    assert tok.decode(supervised[:-1]).strip() == "Ada Lind was born in Oslo."
    assert tok.decode(ex["input_ids"][1:n_prompt]) == "Question: Where was Ada Lind born?\nAnswer:"


def test_collate_right_pads_with_masked_labels():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=2)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
