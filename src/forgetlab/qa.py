"""How question/answer pairs and plain text become token ids, labels and padded batches.

One prompt format is shared by training and evaluation. It is a property of a checkpoint:
`model.prompt_format` of the study config (`plain`, the default, `chat_template` or `tags`),
recorded by the pretrain stage in the tokenizer config of its output (`set_prompt_format`) and
read back by every later stage from the tokenizer it loads (`prompt_format`):

* ``plain``:         <bos>Question: {question}\\nAnswer: {answer}<eos>
* ``chat_template``: the tokenizer's own chat template, a user turn holding the question (after
  an optional system turn, `model.prompt_system`) and an assistant turn holding the answer; the
  prompt is the conversation without the assistant turn, with ``add_generation_prompt``; extra
  template variables come from `model.chat_template_kwargs` (open-unlearning's date_string);
* ``tags``:          <bos>{question_start}{question}{question_end}{answer_start} then
  {answer}{answer_end}<eos>, the four strings from `model.prompt_tags` (TOFU's own models used
  question_start "[INST] ", question_end " [/INST]").

Every format splits an example into (prompt, answer, end) token ids, each part tokenized on its
own, so the boundary is exact: labels are -100 on the prompt (answer-only loss masking) and the
token ids on the answer and the end (the eos, after the answer's closing tokens if the format
has them). In ``chat_template`` the prompt must be a prefix of the tokenized conversation (as in
open-unlearning's preprocess_chat_instance), the end is the template's closing tokens of an empty
assistant turn, and an eos is appended when the template's conversation does not end with one.
"""

from __future__ import annotations

import torch

IGNORE = -100
PROMPT = "Question: {question}\nAnswer:"
FORMATS = ("plain", "chat_template", "tags")
TAGS = ("question_start", "question_end", "answer_start", "answer_end")
FORMAT_KEY = "forgetlab_prompt_format"  # the tokenizer config's key (tokenizer_config.json)


def prompt_spec(model_cfg: dict) -> dict | None:
    """The prompt format of a study's `model` section, as recorded with a checkpoint; None for
    `plain` (nothing is recorded, so a plain study's files are the same as before formats)."""
    fmt = model_cfg.get("prompt_format", "plain")
    if fmt not in FORMATS:
        raise ValueError(f"model.prompt_format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "plain":
        return None
    spec = {"format": fmt}
    if fmt == "tags":
        tags = model_cfg.get("prompt_tags") or {}
        spec["tags"] = {k: str(tags.get(k, "")) for k in TAGS}
    if fmt == "chat_template":
        if model_cfg.get("prompt_system"):
            spec["system"] = model_cfg["prompt_system"]
        if model_cfg.get("chat_template_kwargs"):
            spec["template_kwargs"] = dict(model_cfg["chat_template_kwargs"])
    return spec


def set_prompt_format(tokenizer, spec: dict | None) -> None:
    """Record `spec` (prompt_spec) in the tokenizer's config: save_pretrained writes it, and
    from_pretrained reads it back. None records nothing (plain)."""
    if spec is None:
        tokenizer.init_kwargs.pop(FORMAT_KEY, None)
        return
    if spec["format"] == "chat_template" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("model.prompt_format chat_template: the tokenizer has no chat template")
    tokenizer.init_kwargs[FORMAT_KEY] = spec


def prompt_format(tokenizer) -> dict:
    """The prompt format recorded in a tokenizer's config (plain when none is)."""
    return getattr(tokenizer, "init_kwargs", {}).get(FORMAT_KEY) or {"format": "plain"}


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _chat(tokenizer, spec: dict, question: str, answer: str | None, generation: bool) -> list[int]:
    messages = [{"role": "system", "content": spec["system"]}] if spec.get("system") else []
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation,
                                              return_dict=False, **spec.get("template_kwargs", {})))


def _chat_parts(tokenizer, spec: dict, question: str, answer: str) -> tuple[list[int], list[int], list[int]]:
    prompt = _prompt(tokenizer, spec, question)
    tail = {}
    for key, text in (("full", answer), ("empty", "")):
        ids = _chat(tokenizer, spec, question, text, False)
        if ids[:len(prompt)] != prompt:
            raise ValueError("model.prompt_format chat_template: the tokenizer's chat template does not begin the "
                             "conversation with its generation prompt, so the answer's tokens cannot be told apart")
        tail[key] = ids[len(prompt):] + ([] if ids[-1] == tokenizer.eos_token_id else [tokenizer.eos_token_id])
    end = tail["empty"]
    if len(end) >= len(tail["full"]) or tail["full"][len(tail["full"]) - len(end):] != end:
        end = tail["full"][-1:]  # the closing tokens merge with the answer's: only the eos is the end
    return prompt, tail["full"][:len(tail["full"]) - len(end)], end


def _prompt(tokenizer, spec: dict, question: str) -> list[int]:
    if spec["format"] == "chat_template":
        return _chat(tokenizer, spec, question, None, True)
    if spec["format"] == "tags":
        tags = spec["tags"]
        return _bos(tokenizer) + _ids(tokenizer, tags["question_start"] + question + tags["question_end"]
                                      + tags["answer_start"])
    return [tokenizer.bos_token_id] + _ids(tokenizer, PROMPT.format(question=question))


def qa_parts(tokenizer, question: str, answer: str) -> tuple[list[int], list[int], list[int]]:
    """(prompt, answer, end) token ids of one QA pair in the tokenizer's prompt format."""
    spec = prompt_format(tokenizer)
    if spec["format"] == "chat_template":
        return _chat_parts(tokenizer, spec, question, answer)
    if spec["format"] == "tags":
        end = _ids(tokenizer, spec["tags"]["answer_end"]) + [tokenizer.eos_token_id]
        return _prompt(tokenizer, spec, question), _ids(tokenizer, answer), end
    return _prompt(tokenizer, spec, question), _ids(tokenizer, " " + answer), [tokenizer.eos_token_id]


def encode_qa(tokenizer, question: str, answer: str, max_length: int = 128) -> dict:
    """Token ids and answer-only labels for one QA pair."""
    prompt, reply, end = qa_parts(tokenizer, question, answer)
    reply = reply + end
    ids = (prompt + reply)[:max_length]
    labels = ([IGNORE] * len(prompt) + reply)[:max_length]
    return {"input_ids": ids, "labels": labels}


def encode_prompt(tokenizer, question: str) -> list[int]:
    """Prompt ids for greedy generation of an answer."""
    return _prompt(tokenizer, prompt_format(tokenizer), question)


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
