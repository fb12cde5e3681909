#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Writes the sequence-classification PEFT golden files (modules_to_save, trained biases) under tests/fixtures/peft/.
"""Golden files for VeRA adapters as PEFT saves them for a real task, made with real torch, peft,
transformers and safetensors.

    make_peft_task_fixtures.py [--out DIR]                 write the fixtures (default: tests/fixtures/peft)
    make_peft_task_fixtures.py --check-merged CASE FILE    compare a model written by `vera merge` with
                                                           PEFT's merge_and_unload of CASE
    make_peft_task_fixtures.py --check-adapter CASE DIR    load a VeRA adapter re-saved by vera, or a LoRA
                                                           adapter written by `vera export-lora`, into PEFT on
                                                           CASE's base model; merge and compare as above

A tiny BertForSequenceClassification (hidden 16, one layer, random init, seeded) is adapted with
VeRA on query and value (r = 8, init_weights=False, task_type SEQ_CLS, so PEFT puts the classifier
in modules_to_save). One case per `bias` setting:

    seq_cls_bias_none        save_projection=True (PEFT's default)
    seq_cls_bias_vera_only   save_projection=False: the file holds the seed only
    seq_cls_bias_all         save_projection=True

Then every trainable tensor is perturbed as training would change it: lambda_b = 1 + 0.5 N(0, 1),
lambda_d = N(0, 1), and the trained biases and the classifier copy get 0.1 N(0, 1) added, so no
part of an adapter is a no-op. Each case directory holds:

    adapter/              save_pretrained output (adapter_config.json, adapter_model.safetensors)
    base.safetensors      the base model's state dict (float32)
    merged.safetensors    PEFT's merge_and_unload(safe_merge=True) of the adapted model
"""

import argparse
import os
import shutil
import sys

import safetensors
import safetensors.torch
import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification

import peft
from peft import PeftModel, VeraConfig, get_peft_model

import make_peft_fixtures  # tools/, beside this script

RANK = 8
PRNG_KEY = 4321
MODEL_SEED = 0
TRAIN_SEED = 11
CASES = {
    "seq_cls_bias_none": {"bias": "none", "save_projection": True},
    "seq_cls_bias_vera_only": {"bias": "vera_only", "save_projection": False},
    "seq_cls_bias_all": {"bias": "all", "save_projection": True},
}


def versions():
    # The same record as the single-layer fixtures' (library versions, CPU), for this generator.
    return make_peft_fixtures.generator_record("tools/make_peft_task_fixtures.py",
                                               projection_prng_key=PRNG_KEY, r=RANK)


def base_model():
    torch.manual_seed(MODEL_SEED)
    config = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=20, max_position_embeddings=8, type_vocab_size=1, num_labels=3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape))  # BERT starts with zero biases
    return model.eval()


def vera_config(case):
    return VeraConfig(r=RANK, target_modules=["query", "value"], task_type="SEQ_CLS",
                      projection_prng_key=PRNG_KEY, init_weights=False, vera_dropout=0.0, **CASES[case])


def adapted_model(case):
    model = get_peft_model(base_model(), vera_config(case))
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if not param.requires_grad:
                continue
            noise = torch.randn(param.shape, generator=generator)
            if ".vera_lambda_b." in name:
                param.copy_(1.0 + 0.5 * noise)
            elif ".vera_lambda_d." in name:
                param.copy_(noise)
            else:  # a trained bias or the classifier's modules_to_save copy
                param.add_(0.1 * noise)
    return model.eval()


def state(model):
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def write_fixtures(out_dir):
    meta = versions()
    for case in CASES:
        directory = os.path.join(out_dir, case)
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.makedirs(directory)
        model = adapted_model(case)
        model.save_pretrained(os.path.join(directory, "adapter"))
        readme = os.path.join(directory, "adapter", "README.md")
        if os.path.exists(readme):
            os.remove(readme)  # the generated model card says nothing the tests need
        safetensors.torch.save_file(state(base_model()), os.path.join(directory, "base.safetensors"),
                                    metadata=dict(meta, format="pt"))
        merged = state(model.merge_and_unload(safe_merge=True))
        safetensors.torch.save_file(merged, os.path.join(directory, "merged.safetensors"),
                                    metadata=dict(meta, format="pt", case=case))
        # The saved adapter, loaded by PEFT onto a fresh base model, must merge to the same weights.
        reloaded = state(PeftModel.from_pretrained(base_model(), os.path.join(directory, "adapter"))
                         .merge_and_unload(safe_merge=True))
        same = all(torch.equal(reloaded[k], merged[k]) for k in merged)
        print(f"{case}: {len(merged)} tensors; PEFT's reload merges to the same bits: {same}")
        if not same:
            return 1
    make_peft_fixtures.finish_fixtures(out_dir, meta, "VERSIONS_task.json")
    return 0


def compare_with_peft_merge(merged, fixtures, case):
    """Every tensor of `merged` against PEFT's merged model: adapted weights within a float32
    tolerance, everything else bit for bit."""
    expected = safetensors.torch.load_file(os.path.join(fixtures, case, "merged.safetensors"))
    if sorted(merged) != sorted(expected):
        print(f"FAILED: tensor names differ: {sorted(set(merged) ^ set(expected))}")
        return 1
    worst = 0.0
    changed = 0
    for key in sorted(expected):
        got, want = merged[key], expected[key]
        if got.dtype != want.dtype or got.shape != want.shape:
            print(f"FAILED: {key}: {got.dtype} {tuple(got.shape)}, expected {want.dtype} {tuple(want.shape)}")
            return 1
        if torch.equal(got, want):
            continue
        changed += 1
        diff = (got.double() - want.double()).abs().max().item()
        relative = diff / max(want.abs().max().item(), 1.0)
        print(f"{key}: max |got - PEFT| = {diff:.3e}")
        if not (".query.weight" in key or ".value.weight" in key):
            print(f"FAILED: {key} is not an adapted weight and differs")
            return 1
        worst = max(worst, relative)
    ok = worst <= 1e-6
    print(f"{len(expected)} tensors, {changed} not bit-identical (adapted weights only)")
    print("OK" if ok else f"FAILED: relative difference {worst:.3e} > 1e-6")
    return 0 if ok else 1


def check_adapter(case, directory, fixtures):
    base = BertForSequenceClassification(base_model().config)
    base.load_state_dict(safetensors.torch.load_file(os.path.join(fixtures, case, "base.safetensors")))
    model = PeftModel.from_pretrained(base.eval(), directory)
    print(f"loaded {type(model.peft_config['default']).__name__} from {directory}")
    return compare_with_peft_merge(state(model.merge_and_unload(safe_merge=True)), fixtures, case)


def main():
    make_peft_fixtures.fix_hash_seed()
    default_out = make_peft_fixtures.default_fixture_dir()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=default_out, help="fixture directory to write")
    parser.add_argument("--fixtures", default=default_out, help="fixture directory (for the checks)")
    parser.add_argument("--check-merged", nargs=2, metavar=("CASE", "FILE"), help="model file from `vera merge`")
    parser.add_argument("--check-adapter", nargs=2, metavar=("CASE", "DIR"),
                        help="adapter directory written by vera (VeRA re-save or LoRA export)")
    args = parser.parse_args()
    if args.check_merged:
        case, path = args.check_merged
        return compare_with_peft_merge(safetensors.torch.load_file(path), args.fixtures, case)
    if args.check_adapter:
        return check_adapter(*args.check_adapter, args.fixtures)
    return write_fixtures(os.path.normpath(args.out))


if __name__ == "__main__":
    sys.exit(main())
