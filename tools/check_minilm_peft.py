#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Checks the VeRA adapter that examples/minilm's `minilm` program trained against PEFT.

Loads all-MiniLM-L6-v2 as transformers' BertForSequenceClassification, applies the adapter
(`<results>/vera_adapter`, PEFT's format: VeRA on query and value, the classifier under
modules_to_save) with PeftModel.from_pretrained, runs the texts of `<results>/check_logits.json`
and compares the logits with the ones the C++ program wrote there. Fails (exit 1) when
max |PEFT - C++| / max |C++| exceeds 1e-4.

Run with the peer venv (scripts/make-peer-venv.sh) after the program:
  build/minilm/examples/minilm/minilm --out minilm_results
  ../peer-venv/bin/python tools/check_minilm_peft.py [--results minilm_results] [--data data/minilm]
"""
import argparse
import importlib.metadata as md
import json
import pathlib
import sys

import torch
from peft import PeftModel
from transformers import AutoTokenizer, BertForSequenceClassification

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=pathlib.Path, default=pathlib.Path("minilm_results"),
                        help="the --out directory of the minilm program")
    parser.add_argument("--data", type=pathlib.Path, default=ROOT / "data" / "minilm",
                        help="directory filled by scripts/fetch-minilm.sh")
    args = parser.parse_args()

    check = json.loads((args.results / "check_logits.json").read_text(encoding="utf-8"))
    topics = check["topics"]
    base = BertForSequenceClassification.from_pretrained(str(args.data), num_labels=len(topics))
    model = PeftModel.from_pretrained(base, str(args.results / "vera_adapter")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(args.data))
    enc = tokenizer(check["texts"], padding="longest", truncation=True, max_length=check["max_length"],
                    return_tensors="pt")
    vera_layers = [m for m in model.modules() if hasattr(m, "vera_lambda_b")]
    with torch.no_grad():
        logits = model(**enc).logits
        # What the VeRA vectors contribute, for scale: the same model with every b set to zero.
        for layer in vera_layers:
            for b in layer.vera_lambda_b.values():
                b.zero_()
        without_vera = model(**enc).logits
    want = torch.tensor(check["logits"], dtype=torch.float32)
    error = ((logits - want).abs().max() / want.abs().max()).item()
    agree = (logits.argmax(dim=1) == want.argmax(dim=1)).float().mean().item()
    versions = {name: md.version(name) for name in ("torch", "transformers", "peft")}
    print(f"PEFT {versions['peft']}, transformers {versions['transformers']}, torch {versions['torch']}: "
          f"{len(vera_layers)} VeRA layers, {len(check['texts'])} texts")
    print(f"max |PEFT - C++| / max |C++| = {error:.3g} (tolerance {TOLERANCE:g}); "
          f"same predicted topic for {agree:.0%}; the VeRA vectors move the logits by up to "
          f"{((logits - without_vera).abs().max() / want.abs().max()).item():.3g} of that scale")
    return 0 if error <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
