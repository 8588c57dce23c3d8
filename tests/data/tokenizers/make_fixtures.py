#!/usr/bin/env python3
"""Writes the tokenizer fixtures that tests/unit/bpe_tokenizer_test.cc checks against.

Three small byte-level BPE tokenizers in the styles of published models, trained here with the
Hugging Face `tokenizers` package, and the ids and decodes that package gives for a set of
multilingual texts. Rerun after changing a style or a text:

    python3 -m venv /tmp/tok && /tmp/tok/bin/pip install tokenizers
    /tmp/tok/bin/python tests/data/tokenizers/make_fixtures.py

Outputs (small, committed): <style>/tokenizer.json (+ tokenizer_config.json or
generation_config.json where the style tests eos lookup) and cases.json.
"""
import json
import os
import random

import tokenizers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers, AddedToken

HERE = os.path.dirname(os.path.abspath(__file__))

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's what they'd done before, and we'll see.",
    "Tokenizers split text into words, then merge bytes into the pieces a model was trained on.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Straße, Größe, Mädchen, Übung.",
    "我们今天学习机器学习和自然语言处理。中文文本没有空格。",
    "日本語のテキストも、ひらがなとカタカナと漢字で書かれています。",
    "النص العربي يكتب من اليمين إلى اليسار، والكلمات منفصلة بمسافات.",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i * 2)\n",
    "Numbers: 12345, 3.14159, 2026-12-07, $1,000.00 and 75% of 42 is 31.5.",
    "Emoji 😀🎉👍 and 👨‍👩‍👧 families, flags 🇩🇪🇯🇵, hearts ❤️.",
    "Whitespace   runs\t\ttabs\n\n\nnewlines\r\n and trailing spaces   ",
    "Question: Tom has 3 apples and buys 5 more. How many? Answer: 8. #### 8",
]

TEXTS = [
    "Hello world! It's a test, isn't it? I'M SURE they'LL pass.",
    "Grüße aus München: die Straße ist 12,5 km lang. Decomposed: Mu\u0308nchen, e\u0301te.",
    "机器学习很有趣。日本語の文章です。",
    "مرحبا بالعالم! كيف حالك؟",
    "Emoji: 😀 👍🏽 👨‍👩‍👧 🇩🇪 ❤️ ✨",
    "def f(x):\n\treturn x ** 2  # square\n\n\n\nprint(f(12345678))",
    "Numbers 1 12 123 1234 12345 3.14159 -42 1e10 0x1F",
    "    leading spaces, trailing spaces    ",
    "runs   of    spaces\n\n\n and \r\n windows\x0bvt\x85nel\u00a0nbsp\u3000ideographic",
    "<|endoftext|>special inside<|endoftext|> text<|endoftext|>",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|>Hi<|eot_id|> <mask>  spaced  <mask> hello world and helloworld",
    "",
    " ",
    "\n",
    "'s 's 'S ’s don't DON'T",
]


def corpus_lines():
    for k in range(20):
        for line in CORPUS:
            yield line if k % 2 == 0 else line.lower()


def train(pre_tokenizer, normalizer, specials, merges):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + merges, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=specials, show_progress=False)
    tok.train_from_iterator(corpus_lines(), trainer)
    return tok


def gpt2():
    tok = train(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), None,
                ["<|endoftext|>"], 300)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, special=True)])
    tok.add_tokens([AddedToken("hello world", normalized=True, special=False),
                    AddedToken("world", single_word=True, special=False)])
    spec = json.loads(tok.to_str())
    # GPT-2's own file spells merges as "a b" strings.
    spec["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m
                               for m in spec["model"]["merges"]]
    return spec, {"tokenizer_config.json": {"eos_token": "<|endoftext|>"}}


def gpt2_prefix_space():
    spec, _ = gpt2()
    spec["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                             "use_regex": True}
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] == "<|endoftext|>"]
    return spec, {}


def llama3():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok = train(pre, None, [], 400)
    # Whole words in the vocabulary that the merges alone would not build: with ignore_merges
    # they come out as one token. (Added before the special tokens, whose ids follow the
    # vocabulary's, as in the published file.)
    spec = json.loads(tok.to_str())
    for word in ["ĠMÃ¼nchen", "Ġspaces", "Ġtrailing"]:
        if word not in spec["model"]["vocab"]:
            spec["model"]["vocab"][word] = len(spec["model"]["vocab"])
    spec["model"]["ignore_merges"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tok.add_special_tokens(specials)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    spec = json.loads(tok.to_str())
    assert spec["model"]["ignore_merges"]
    eot = tok.token_to_id("<|eot_id|>")
    eos = tok.token_to_id("<|end_of_text|>")
    return spec, {"generation_config.json": {"bos_token_id": bos, "eos_token_id": [eos, eot]},
                  "tokenizer_config.json": {"eos_token": "<|begin_of_text|>"}}


def qwen2():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok = train(pre, normalizers.NFC(), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 400)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_tokens([AddedToken("<think>", normalized=False, special=False),
                    AddedToken("München", normalized=True, special=False)])
    spec = json.loads(tok.to_str())
    eos = tok.token_to_id("<|im_end|>")
    return spec, {"generation_config.json": {"eos_token_id": eos}}


def qwen2_tiny():
    """Qwen2 style in at most 320 ids: the vocabulary of the tiny checkpoints of tests/data/hf,
    for the end-to-end test (tests/e2e/hf_grpo_test.cc)."""
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok = train(pre, normalizers.NFC(), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 60)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    spec = json.loads(tok.to_str())
    assert tok.get_vocab_size() <= 320, tok.get_vocab_size()
    return spec, {"generation_config.json": {"eos_token_id": tok.token_to_id("<|im_end|>")}}


STYLES = {"gpt2": gpt2, "gpt2_prefix_space": gpt2_prefix_space, "llama3": llama3,
          "qwen2": qwen2, "qwen2_tiny": qwen2_tiny}


def main():
    cases = {"tokenizers_version": tokenizers.__version__, "texts": TEXTS, "styles": {}}
    rng = random.Random(7)
    for name, make in STYLES.items():
        spec, extra = make()
        out_dir = os.path.join(HERE, name)
        os.makedirs(out_dir, exist_ok=True)
        text = json.dumps(spec, ensure_ascii=False, indent=None)
        with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(text)
        for file_name, content in extra.items():
            with open(os.path.join(out_dir, file_name), "w", encoding="utf-8") as f:
                json.dump(content, f, ensure_ascii=False)
        tok = Tokenizer.from_str(text)  # the reference reads exactly the committed file
        style = {"vocab_size": tok.get_vocab_size(with_added_tokens=True), "encodings": [],
                 "decodes": []}
        for t in TEXTS:
            plain = tok.encode(t, add_special_tokens=False).ids
            special = tok.encode(t, add_special_tokens=True).ids
            style["encodings"].append({
                "ids": plain, "ids_with_special_tokens": special,
                "decode": tok.decode(plain, skip_special_tokens=False),
                "decode_skip_special": tok.decode(special, skip_special_tokens=True)})
        # Arbitrary id sequences: byte pieces out of order give invalid UTF-8, which the
        # decoder replaces.
        vocab = style["vocab_size"]
        for _ in range(20):
            ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 12))]
            style["decodes"].append({"ids": ids,
                                     "text": tok.decode(ids, skip_special_tokens=False),
                                     "text_skip_special": tok.decode(ids,
                                                                     skip_special_tokens=True)})
        cases["styles"][name] = style
    with open(os.path.join(HERE, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
