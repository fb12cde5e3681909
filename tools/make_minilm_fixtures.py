#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes tests/fixtures/minilm/: what examples/minilm's tests compare the C++ tokenizer and BERT
forward against, produced by HuggingFace transformers itself.

  tokenizer_cases.json  a few hundred varied texts with the ids transformers gives them, with the
                        real all-MiniLM-L6-v2 tokenizer and with tiny_tokenizer.json, plus padded,
                        truncated batches with their attention masks
  tiny_tokenizer.json   a ~130-token WordPiece vocabulary in BERT's uncased pipeline, so the
                        tokenizer algorithm is tested without the real model
  tiny_model/           a small random BertForSequenceClassification (config.json, safetensors)
  tiny_reference.json   a batch of ids, token types and masks with its pooler output and logits
  real_classifier.safetensors, real_reference.json
                        a seeded random classifier on all-MiniLM-L6-v2's pooler, and its logits
                        for 64 texts (the C++ test runs when scripts/fetch-minilm.sh has put the
                        model in data/minilm)

Run with the peer venv (scripts/make-peer-venv.sh) after scripts/fetch-minilm.sh:
  ../peer-venv/bin/python tools/make_minilm_fixtures.py [--data data/minilm]
"""
import argparse
import importlib.metadata as md
import json
import pathlib
import random

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel,
                          BertTokenizerFast)

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "minilm"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# The tiny vocabulary's word-length limit differs from the real 100 so that reading it is tested.
TINY_MAX_WORD_CHARS = 24


def versions():
    return {name: md.version(name) for name in ("torch", "transformers", "tokenizers", "safetensors")}


# Hand-written texts: each targets one rule of the pipeline.
HANDWRITTEN = [
    "",
    " ",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "unaffable",
    "UNAFFABLE Unaffable unAffable",
    "Héllo wörld, café, naïve, Ångström, façade, jalapeño, crème brûlée",
    "ÀÁÂÃÄÅ àáâãäå ÈÉÊË ìíîï ÑñÇç ŒœÆæØø ß ẞ",
    "Ǆ ǅ ǆ ǈ ǋ İstanbul ıi Iı",
    "Σίσυφος ΣΊΣΥΦΟΣ Ἀθῆναι ὅτι",
    "Москва ПРИВЕТ ёжик Ёжик",
    "中文分词测试，你好世界。",
    "日本語のテキスト：東京タワー、ひらがな。",
    "한국어 텍스트 안녕하세요 각 힣",
    "mixed中文and English混合",
    "CJK compatibility: 豈 更 車 賈 and ext-B 𠀀 𠀁",
    "emoji 😀😃 🥰 👍🏽 👨‍👩‍👧 🇫🇷 ❤️",
    "numbers 123 4,567.89 3.14159 1e-10 0x1F 2024-01-31 12:30",
    "prices $5.00 €3,50 £10 ¥1000 ₹500 50% 1/2",
    "symbols @user #hashtag a&b a+b=c a<b>c a^b a|b ~tilde `tick` {brace} [bracket] \\back",
    "quotes 'single' \"double\" “curly” ‘curly’ «guillemets» „low“",
    "dashes - – — ‐ hyphen-ated em—dash en–dash",
    "ellipsis… and… more...",
    "Spanish ¿Qué tal? ¡Hola!",
    "punctuation!!! ??? ,,, ... ;;; ::: ()()",
    "tab\tseparated\tvalues",
    "new\nline\r\nwindows\rmac",
    "vertical\x0btab\x0cform feed",
    "control\x00chars\x01\x02\x03 and \x7f delete \x85 next-line",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom",
    "non\u00a0breaking\u2003em\u3000ideographic\u2028line\u2029para",
    "soft\u00adhyphen and bidi \u202aembedding\u202c marks \u200e\u200f",
    "replacement \ufffd char",
    "private use \ue000\uf8ff here",
    "combining: e\u0301 a\u0300 o\u0308 n\u0303 c\u0327 with stacked a\u0301\u0316\u0300",
    "decomposed cafe\u0301 vs composed café",
    "superscripts ² ³ ¹ fractions ½ ¼ ligatures ﬁ ﬂ",
    "fullwidth ＡＢＣ ａｂｃ １２３ ！？",
    "roman numerals Ⅻ ⅻ circled ⓐ Ⓐ",
    "math 𝐀𝐁𝐂 𝑥 ∑ ∫ √ ∞ ≤ ≥ ≠ ± × ÷",
    "arabic العربية مرحبا بالعالم، كيف حالك؟",
    "hebrew שלום עולם",
    "hindi नमस्ते दुनिया। कैसे हो?",
    "thai สวัสดีครับ",
    "tamil கொ கோ கௌ",
    "bengali কো কৌ",
    "vietnamese Tiếng Việt có dấu",
    "armenian Բարեւ ձեզ",
    "georgian გამარჯობა",
    "[CLS] literal special tokens [SEP] in text [MASK] and [PAD] and [UNK]",
    "glued x[SEP]y[MASK]z and [cls] lower-case is not special, [ MASK ] neither",
    "a" * 99,
    "b" * 100,
    "c" * 101,
    "supercalifragilisticexpialidocious " * 3,
    "pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
    "word" * 30 + " short",
    "https://example.com/path?query=1&x=y#frag user@example.org",
    "C++ std::vector<int> x = {1, 2, 3}; // comment",
    "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
    "   leading and trailing spaces   ",
    "multiple     spaces\t\t\ttabs\n\n\nnewlines",
    "I'm can't won't y'all o'clock rock'n'roll",
    "U.S.A. e.g. i.e. etc. Mr. Dr. St.",
    "A long sentence that goes on and on, with many clauses, commas, and words, so that the "
    "tokenizer produces a long sequence which will certainly have to be truncated when the "
    "maximum length is small, and even when it is moderately large; it continues further with "
    "more words about nothing in particular, only to be long enough for every test of truncation.",
]

WORDS = ["the", "model", "Tokenizer", "naïve", "CAFÉ", "running", "unbelievable", "data",
         "transformers", "über", "señor", "北京", "東京", "서울", "Москва", "αβγ", "😀", "🚀",
         "42", "3.14", "don't", "e-mail", "self-attention", "résumé", "Zürich", "ﬁne", "ǅemal",
         "x" * 120, "embedding", "fine-tuning", "VeRA", "low-rank", "BERT", "[MASK]", "[SEP]"]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", ", ", ". ", "! ", "? ", "; ", " - ", "\u00a0",
              "\u3000", "", "\u200b", "\x01"]


def generated_texts(count, seed):
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        n = rng.randint(1, 8)
        parts = []
        for i in range(n):
            parts.append(rng.choice(WORDS))
            if i + 1 < n:
                parts.append(rng.choice(SEPARATORS))
        text = "".join(parts)
        if rng.random() < 0.3:
            text = text.upper() if rng.random() < 0.5 else text.capitalize()
        texts.append(text)
    return texts


def tiny_vocabulary():
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    words = ["the", "is", "of", "and", "to", "in", "hello", "world", "cafe", "naive", "un",
             "play", "run", "token", "model", "##ed", "##ing", "##er", "##able", "##aff",
             "##ize", "##ization", "##ning"]
    punctuation = list(".,!?'\"()-:;/$%&*+=@[]_~#")
    other = ["中", "文", "日", "本", "ß", "α", "β", "σ"]
    tokens = SPECIALS + words + letters + ["##" + c for c in letters] + digits + \
        ["##" + d for d in digits] + punctuation + other
    assert len(tokens) == len(set(tokens))
    return {token: i for i, token in enumerate(tokens)}


def write_tiny_tokenizer(path):
    vocab = tiny_vocabulary()
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=TINY_MAX_WORD_CHARS))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path))
    return vocab


def encode_all(tokenizer, texts, raw_file):
    """ids with transformers, checked against the tokenizers library run on the same file."""
    ids = tokenizer(texts, truncation=True, max_length=512)["input_ids"]
    raw = Tokenizer.from_file(str(raw_file))
    raw.no_truncation()
    raw.no_padding()
    assert [e.ids for e in raw.encode_batch(texts)] == ids
    return ids


def batches(tokenizer, texts):
    """Padded, truncated batches as transformers makes them."""
    cases = []
    for padding, max_length, chosen in (("longest", 12, texts[:16]), ("max_length", 20, texts[16:24]),
                                        ("longest", 128, texts[-8:])):
        enc = tokenizer(chosen, padding=padding, truncation=True, max_length=max_length)
        cases.append({"padding": padding, "max_length": max_length, "texts": chosen,
                      "ids": enc["input_ids"], "mask": enc["attention_mask"]})
    return cases


def tokenizer_cases(texts, real_dir):
    tiny = BertTokenizerFast(tokenizer_file=str(OUT / "tiny_tokenizer.json"))
    real = AutoTokenizer.from_pretrained(str(real_dir))
    return {
        "generated_by": {"script": "tools/make_minilm_fixtures.py", "versions": versions()},
        "texts": texts,
        "tiny": {"ids": encode_all(tiny, texts, OUT / "tiny_tokenizer.json"),
                 "batches": batches(tiny, texts)},
        "real": {"ids": encode_all(real, texts, real_dir / "tokenizer.json"),
                 "batches": batches(real, texts)},
    }


def randomize(model, generator):
    """Replaces every parameter by a seeded draw of a scale that keeps activations lively, so a
    misused LayerNorm gain, bias or embedding shows up in the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
            elif "embeddings" in name:
                p.copy_(0.8 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) / p.shape[1] ** 0.5)


def tiny_model(vocab):
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                        type_vocab_size=2, num_labels=3, layer_norm_eps=1e-12, pad_token_id=0)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    generator = torch.Generator().manual_seed(1)
    randomize(model, generator)
    model.save_pretrained(str(OUT / "tiny_model"), safe_serialization=True)

    # Four rows of length 16 with 16, 11, 5 and 2 real tokens; random token types where real.
    lengths = [16, 11, 5, 2]
    ids = torch.zeros(len(lengths), 16, dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(len(SPECIALS), len(vocab), (n,), generator=generator)
        ids[row, 0], ids[row, n - 1] = vocab["[CLS]"], vocab["[SEP]"]
        types[row, :n] = torch.randint(0, 2, (n,), generator=generator)
        mask[row, :n] = 1
    with torch.no_grad():
        out = model(input_ids=ids, token_type_ids=types, attention_mask=mask,
                    output_hidden_states=True)
        pooled = model.bert.pooler(out.hidden_states[-1])
    return {
        "generated_by": {"script": "tools/make_minilm_fixtures.py", "versions": versions(),
                         "attn_implementation": model.config._attn_implementation},
        "ids": ids.tolist(), "type_ids": types.tolist(), "mask": mask.tolist(),
        "pooled": pooled.tolist(), "logits": out.logits.tolist(),
    }


REAL_TEXTS = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "The cat sits outside.",
    "The new movie is awesome!", "The new movie is so great.", "I love pasta.", "Do you like pizza?",
    "This is a sentence-transformers model: it maps sentences to a 384 dimensional dense vector space.",
    "Héllo wörld, café, naïve.", "中文分词测试，你好世界。", "emoji 😀 🥰 👍🏽",
    "numbers 123 4,567.89 and 3.14159", "[MASK] tokens are [SEP] special",
]


def real_reference(real_dir, texts):
    tokenizer = AutoTokenizer.from_pretrained(str(real_dir))
    model = BertModel.from_pretrained(str(real_dir)).eval()
    torch.manual_seed(0)
    classifier = torch.nn.Linear(model.config.hidden_size, 3)
    save_file({"classifier.weight": classifier.weight.detach().contiguous(),
               "classifier.bias": classifier.bias.detach().contiguous()},
              str(OUT / "real_classifier.safetensors"))
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        pooled = model(**enc).pooler_output
        logits = classifier(pooled)
    return {
        "generated_by": {"script": "tools/make_minilm_fixtures.py", "versions": versions(),
                         "attn_implementation": model.config._attn_implementation,
                         "model": "all-MiniLM-L6-v2 from scripts/fetch-minilm.sh"},
        "max_length": 128, "texts": texts,
        "ids": enc["input_ids"].tolist(), "mask": enc["attention_mask"].tolist(),
        "logits": logits.tolist(),
    }


def dump(name, value):
    path = OUT / name
    path.write_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=ROOT / "data" / "minilm",
                        help="directory filled by scripts/fetch-minilm.sh")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    vocab = write_tiny_tokenizer(OUT / "tiny_tokenizer.json")
    texts = HANDWRITTEN + generated_texts(200, seed=7)
    dump("tokenizer_cases.json", tokenizer_cases(texts, args.data))
    dump("tiny_reference.json", tiny_model(vocab))
    real_texts = REAL_TEXTS + [t for t in texts if t.strip()][:64 - len(REAL_TEXTS)]
    dump("real_reference.json", real_reference(args.data, real_texts))


if __name__ == "__main__":
    main()
