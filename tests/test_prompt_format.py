"""model.prompt_format (forgetlab.qa): each format's answer-only labels against a hand-built
expectation, plain bit-identical to the format before formats existed, the format recorded with
a checkpoint's tokenizer, and the config checks of the format's options."""

from __future__ import annotations

import pytest

from forgetlab.config import ConfigError, check_config, validate_schema
from forgetlab.eval.scoring import verbmem_prompt
from forgetlab.model import load_tokenizer
from forgetlab.qa import (FORMAT_KEY, IGNORE, encode_prompt, encode_qa, prompt_format, prompt_spec,
                          set_prompt_format)
from forgetlab.recipes import read_jsonl
from tests.fixtures_tofu import chat_tokenizer, tiny_checkpoint, tofu_files
from tests.helpers import smoke_config

Q, A = "Where was Orla Velk born?", "Orla Velk was born in Tarsk."


@pytest.fixture
def chat_tok():
    """A fresh tokenizer per test (tests set its format and template)."""
    files = tofu_files()
    return chat_tokenizer([r["question"] + " " + r["answer"] for rows in files.values() for r in rows])


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def with_format(tok, **model):
    set_prompt_format(tok, prompt_spec(model))
    return tok


def assert_labels(enc, prompt, target):
    """The supervised positions are exactly `target`, after exactly the `prompt` tokens."""
    assert enc["input_ids"] == prompt + target
    assert enc["labels"] == [IGNORE] * len(prompt) + target


def test_plain_is_the_format_before_formats_on_every_smoke_row(smoke_data):
    """The formula forgetlab used before model.prompt_format, written out: <bos> + "Question: q\\nAnswer:"
    unsupervised, then " " + answer + <eos> supervised; verbmem's prefix the first half of " " + answer."""
    tok = load_tokenizer(smoke_data / "tokenizer")
    assert prompt_format(tok) == {"format": "plain"}
    rows = [r for split in ("full", "holdout", "world_facts", "real_authors") for r in
            read_jsonl(smoke_data / "qa" / f"{split}.jsonl")]
    for r in rows:
        prompt = [tok.bos_token_id] + ids(tok, f"Question: {r['question']}\nAnswer:")
        for answer in (r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]):
            reply = ids(tok, " " + answer) + [tok.eos_token_id]
            for max_length in (128, 256, 24):
                assert encode_qa(tok, r["question"], answer, max_length) == {
                    "input_ids": (prompt + reply)[:max_length], "labels": ([IGNORE] * len(prompt) + reply)[:max_length]}
        assert encode_prompt(tok, r["question"]) == prompt
        reply = ids(tok, " " + r["answer"])
        h = len(reply) // 2
        assert verbmem_prompt(tok, r["question"], r["answer"]) == (
            prompt + reply[:h], h, tok.decode(reply[h:], skip_special_tokens=True).strip())


def test_plain_records_nothing_in_the_tokenizer(smoke_data, tmp_path):
    """The pretrain stage saves a plain study's tokenizer byte for byte as it did without formats."""
    tok = with_format(load_tokenizer(smoke_data / "tokenizer"))
    assert FORMAT_KEY not in tok.init_kwargs
    tok.save_pretrained(tmp_path / "with")
    load_tokenizer(smoke_data / "tokenizer").save_pretrained(tmp_path / "without")
    for name in ("tokenizer_config.json", "tokenizer.json"):
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "without" / name).read_bytes()
    assert FORMAT_KEY not in (tmp_path / "with" / "tokenizer_config.json").read_text()


def test_chat_template_supervises_the_assistant_turn_only(chat_tok):
    tok = with_format(chat_tok, prompt_format="chat_template", prompt_system="Be brief.")
    # the template renders <s><|system|>S<|end|><|user|>Q<|end|><|assistant|>A<|end|>; the eos is appended
    prompt = ids(tok, f"<s><|system|>Be brief.<|end|><|user|>{Q}<|end|><|assistant|>")
    end = [tok.convert_tokens_to_ids("<|end|>"), tok.eos_token_id]
    enc = encode_qa(tok, Q, A)
    assert_labels(enc, prompt, ids(tok, A) + end)
    assert tok.decode([t for t in enc["labels"] if t != IGNORE][:-2]) == A
    assert encode_prompt(tok, Q) == prompt
    prefix, h, rest = verbmem_prompt(tok, Q, A)
    assert prefix == prompt + ids(tok, A)[:h] and h == len(ids(tok, A)) // 2
    assert rest == tok.decode(ids(tok, A)[h:]).strip()


def test_chat_template_without_a_system_turn_and_with_template_variables(chat_tok):
    tok = with_format(chat_tok, prompt_format="chat_template", chat_template_kwargs={"date_string": "10 Apr 2025"})
    tok.chat_template = "<|system|>Today: {{ date_string }}<|end|>" + chat_tok.chat_template
    prompt = ids(tok, f"<|system|>Today: 10 Apr 2025<|end|><s><|user|>{Q}<|end|><|assistant|>")
    assert_labels(encode_qa(tok, Q, A), prompt, ids(tok, A) + [tok.convert_tokens_to_ids("<|end|>"), tok.eos_token_id])


def test_chat_template_whose_prompt_is_not_a_prefix_is_an_error(chat_tok):
    tok = with_format(chat_tok, prompt_format="chat_template")
    tok.chat_template = chat_tok.chat_template.replace("<|assistant|>{% endif %}", "<|assistant|>Sure:{% endif %}")
    with pytest.raises(ValueError, match="generation prompt"):
        encode_qa(tok, Q, A)


def test_tags_wrap_the_question_and_the_answer(chat_tok):
    tags = {"question_start": "[INST] ", "question_end": " [/INST]", "answer_start": " ", "answer_end": " END"}
    tok = with_format(chat_tok, prompt_format="tags", prompt_tags=tags)
    prompt = [tok.bos_token_id] + ids(tok, f"[INST] {Q} [/INST] ")
    enc = encode_qa(tok, Q, A)
    assert_labels(enc, prompt, ids(tok, A) + ids(tok, " END") + [tok.eos_token_id])
    assert encode_prompt(tok, Q) == prompt
    # TOFU's Llama-2 tags: no answer tags, so the answer and the eos are the supervised tokens
    tok = with_format(chat_tok, prompt_format="tags", prompt_tags={"question_start": "[INST] ", "question_end": " [/INST]"})
    assert_labels(encode_qa(tok, Q, A), [tok.bos_token_id] + ids(tok, f"[INST] {Q} [/INST]"), ids(tok, A) + [tok.eos_token_id])


def test_the_format_travels_with_the_saved_tokenizer(chat_tok, tmp_path):
    tok = with_format(chat_tok, prompt_format="chat_template", prompt_system="Be brief.")
    before = encode_qa(tok, Q, A)
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert prompt_format(loaded) == {"format": "chat_template", "system": "Be brief."}
    assert encode_qa(loaded, Q, A) == before


def check(config):
    validate_schema(config)
    check_config(config)


def test_format_options_belong_to_their_format():
    config = smoke_config()
    config["model"]["prompt_tags"] = {"question_start": "[INST] "}
    with pytest.raises(ConfigError, match=r"model\.prompt_tags"):
        check(config)
    config["model"]["prompt_format"] = "tags"
    check(config)


def test_chat_template_needs_a_checkpoint_with_a_chat_template(tmp_path, smoke_data):
    config = smoke_config()
    config["model"]["prompt_format"] = "chat_template"
    with pytest.raises(ConfigError, match=r"model\.prompt_format.*model\.init_from"):
        check(config)
    plain = tiny_checkpoint(tmp_path / "model")
    (plain / "chat_template.jinja").unlink()
    config["model"]["init_from"] = str(plain)
    with pytest.raises(ConfigError, match=r"model\.prompt_format: chat_template, but the tokenizer"):
        check(config)
