#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes tests/fixtures/minilm/tiny_vera_adapter/ and tiny_vera_reference.json: a PEFT VeRA
adapter on the tiny random BertForSequenceClassification of make_minilm_fixtures.py and the
logits PEFT computes with it, so that minilm_test checks, without the real model or PEFT, that
the C++ model with adapters loaded by vera::io runs as PEFT does.

The adapter is what the `minilm` program saves (task type SEQ_CLS, VeRA on query and value, the
classifier under modules_to_save, A and B saved), with PEFT's init_weights=False (b = 1,
d ~ N(0, 1)) and a random classifier so that every part moves the logits.

Run with the peer venv (scripts/make-peer-venv.sh), after make_minilm_fixtures.py:
  ../peer-venv/bin/python tools/make_minilm_peft_fixture.py
"""
import importlib.metadata as md
import json
import pathlib

import torch
from peft import VeraConfig, get_peft_model
from transformers import BertForSequenceClassification

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "minilm"


def main():
    reference = json.loads((OUT / "tiny_reference.json").read_text(encoding="utf-8"))
    base = BertForSequenceClassification.from_pretrained(str(OUT / "tiny_model")).eval()
    config = VeraConfig(r=8, target_modules=["query", "value"], task_type="SEQ_CLS", init_weights=False,
                        save_projection=True, projection_prng_key=0)
    torch.manual_seed(0)
    model = get_peft_model(base, config).eval()
    head = model.base_model.model.classifier.modules_to_save["default"]
    with torch.no_grad():
        head.weight.normal_(0.0, 0.5)
        head.bias.normal_(0.0, 0.5)
    adapter_dir = OUT / "tiny_vera_adapter"
    model.save_pretrained(str(adapter_dir))
    # Nothing machine-specific in the committed files: no absolute path, no generated model card.
    (adapter_dir / "README.md").unlink(missing_ok=True)
    config_path = adapter_dir / "adapter_config.json"
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    saved["base_model_name_or_path"] = "tests/fixtures/minilm/tiny_model"
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    batch = {name: torch.tensor(reference[key]) for name, key in
             (("input_ids", "ids"), ("attention_mask", "mask"), ("token_type_ids", "type_ids"))}
    with torch.no_grad():
        logits = model(**batch).logits
        with model.disable_adapter():
            base_logits = model(**batch).logits
    versions = {name: md.version(name) for name in ("torch", "transformers", "peft", "safetensors")}
    out = {
        "generated_by": {"script": "tools/make_minilm_peft_fixture.py", "versions": versions},
        "ids": reference["ids"], "mask": reference["mask"], "type_ids": reference["type_ids"],
        "logits": logits.tolist(),
    }
    path = OUT / "tiny_vera_reference.json"
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {path.relative_to(ROOT)}; the adapter moves the logits by up to "
          f"{(logits - base_logits).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
