"""How question/answer pairs and plain text become token ids, labels and padded batches.

One prompt format is shared by training and evaluation:

    <bos>Question: {question}\nAnswer: {answer}<eos>

Labels are -100 on the prompt (answer-only loss masking) and the token ids on the answer.
"""

from __future__ import annotations

import torch

IGNORE = -100
PROMPT = "Question: {question}\nAnswer:"


def encode_qa(tokenizer, question: str, answer: str, max_length: int = 128) -> dict:
    """Token ids and answer-only labels for one QA pair."""
    prompt = tokenizer(PROMPT.format(question=question), add_special_tokens=False)["input_ids"]
    reply = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    prompt = [tokenizer.bos_token_id] + prompt
    reply = reply + [tokenizer.eos_token_id]
    ids = (prompt + reply)[:max_length]
    labels = ([IGNORE] * len(prompt) + reply)[:max_length]
    return {"input_ids": ids, "labels": labels}


def encode_prompt(tokenizer, question: str) -> list[int]:
    """Prompt ids for greedy generation of an answer."""
    ids = tokenizer(PROMPT.format(question=question), add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id] + ids


def encode_text(tokenizer, text: str, max_length: int = 256) -> dict:
    """Ids and labels for language modelling on plain text (every token supervised)."""
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = (ids + [tokenizer.eos_token_id])[:max_length]
    return {"input_ids": ids, "labels": list(ids)}


def encode_text_chunks(tokenizer, text: str, max_length: int) -> list[dict]:
    """A whole document for next-token training on raw text (a muse study): <bos> + its tokens +
    <eos>, cut into consecutive chunks of max_length tokens (the last one shorter), every token of
    every chunk supervised (labels = ids: the loss predicts each token after a chunk's first from
    the ones before it). Each chunk starts a fresh context; a last chunk of one token, with nothing
    to predict, is dropped."""
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return [{"input_ids": ids[i:i + max_length], "labels": ids[i:i + max_length]}
            for i in range(0, len(ids), max_length) if len(ids) - i > 1]


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples into tensors with an attention mask."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the labels under next-token logits.

    Returns (logp, mask), both of shape (batch, seq-1): logp[b, t] = log p(labels[b, t+1] | <= t),
    and mask is 1 where that label is supervised.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE
    safe = shift_labels.clamp(min=0)
    logp = torch.log_softmax(shift_logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask
