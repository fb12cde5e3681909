#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Trains a VeRA adapter with PEFT on all-MiniLM-L6-v2 and checks that the C++ minilm program
loads it (vera::io::load_peft_adapter) and gives the same logits.

PEFT 0.21.2 adapts every query and value of transformers' BertForSequenceClassification (r 256,
projection_prng_key 0, A and B saved, the classifier under modules_to_save as SEQ_CLS does),
trains a few AdamW steps on fortunes from the five topics of examples/minilm, and writes
`<out>/peft_adapter` and `<out>/check_logits.json` (64 other fortunes and PEFT's logits at
evaluation). Then `minilm --check-peft <out>` loads both and fails above 1e-4
(max abs difference / max abs logit).

  ../peer-venv/bin/python tools/check_minilm_from_peft.py --minilm build/minilm/examples/minilm/minilm \
      [--out minilm_from_peft] [--data data/minilm] [--steps 8]
"""
import argparse
import importlib.metadata as md
import json
import pathlib
import subprocess
import sys

import torch
from peft import VeraConfig, get_peft_model
from transformers import AutoTokenizer, BertForSequenceClassification

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOPICS = ["computers", "science", "politics", "law", "food"]


def fortunes(directory, topic):
    """The fortunes of one file, overstrikes removed and whitespace trimmed, as examples/minilm reads them."""
    text = (directory / topic).read_text(encoding="utf-8", errors="replace")
    out = []
    for chunk in text.split("\n%\n"):
        while "\b" in chunk:
            i = chunk.index("\b")
            chunk = chunk[:max(i - 1, 0)] + chunk[i + 1:]
        chunk = chunk.strip()
        if chunk and chunk != "%":
            out.append(chunk)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minilm", type=pathlib.Path, help="the minilm program; without it only the files are written")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("minilm_from_peft"))
    p.add_argument("--data", type=pathlib.Path, default=ROOT / "data" / "minilm")
    p.add_argument("--fortunes", type=pathlib.Path, default=pathlib.Path("/usr/share/games/fortunes"))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    texts, labels, held_out = [], [], []
    for label, topic in enumerate(TOPICS):
        items = fortunes(args.fortunes, topic)
        texts += items[:16]
        labels += [label] * 16
        held_out += items[16:16 + 13]
    held_out = held_out[:64]

    tokenizer = AutoTokenizer.from_pretrained(str(args.data))
    base = BertForSequenceClassification.from_pretrained(str(args.data), num_labels=len(TOPICS))
    config = VeraConfig(r=256, target_modules=["query", "value"], task_type="SEQ_CLS", projection_prng_key=0,
                        save_projection=True, d_initial=0.1)
    model = get_peft_model(base, config)
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=3e-2)
    order = torch.randperm(len(texts)).tolist()
    model.train()
    for step in range(args.steps):
        rows = [order[(step * 8 + i) % len(order)] for i in range(8)]
        batch = tokenizer([texts[i] for i in rows], padding="longest", truncation=True, max_length=128,
                          return_tensors="pt")
        loss = model(**batch, labels=torch.tensor([labels[i] for i in rows])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"PEFT step {step + 1}/{args.steps}: loss {loss.item():.4f}")

    model.eval()
    with torch.no_grad():
        enc = tokenizer(held_out, padding="longest", truncation=True, max_length=128, return_tensors="pt")
        logits = model(**enc).logits
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out / "peft_adapter"))
    versions = {name: md.version(name) for name in ("torch", "transformers", "peft")}
    (args.out / "check_logits.json").write_text(json.dumps(
        {"texts": held_out, "max_length": 128, "logits": logits.tolist(), "versions": versions}))
    print(f"wrote {args.out / 'peft_adapter'} and {args.out / 'check_logits.json'} "
          f"(PEFT {versions['peft']}, transformers {versions['transformers']}, torch {versions['torch']})")
    if args.minilm is None:
        return 0
    return subprocess.run([str(args.minilm), "--check-peft", str(args.out), "--model", str(args.data)]).returncode


if __name__ == "__main__":
    sys.exit(main())
