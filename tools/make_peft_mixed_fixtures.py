#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Writes the PEFT golden files for a model whose VeRA targets mix transformers' Conv1D and nn.Linear.
"""Golden files for one VeRA adapter on a model that mixes Conv1D and nn.Linear targets, made
with real torch, peft, transformers and safetensors.

    make_peft_mixed_fixtures.py [--out DIR]    write DIR/mixed (default: tests/fixtures/peft/mixed)

PEFT decides fan_in_fan_out per module from its type while it builds the model (Conv1D: true,
nn.Linear: false, overriding the config with a warning) and saves whichever value it set last,
so the saved flag is wrong for some layers. The model, run in this order:

    attn.c_attn   Conv1D 12 -> 20 (weight stored 12 x 20, in x out)
    mlp.up        nn.Linear 20 -> 16 (weight 16 x 20, out x in)
    mlp.square    nn.Linear 16 -> 16 (square: its layout cannot be read from its shape)

VeraConfig(r=8, projection_prng_key=4321, init_weights=False), saved seed only, with lambda_b =
1 + 0.5 N(0, 1) and lambda_d = N(0, 1). The directory holds `adapter/`, `base.safetensors`
(float32 weights), its float16 and bfloat16 copies, and `io.safetensors`, computed by PEFT from
the saved adapter loaded onto a fresh base model:

    x                         the input (3 x 12)
    y                         the model's output
    in.<layer>, out.<layer>   each adapted layer's input and output
    <case>.<layer>.weight     merge_and_unload(safe_merge=True) weights, cases merged (float32),
                              merged_f16 and merged_bf16 (the adapter on the half-precision copies)
"""

import os
import shutil
import sys
import warnings

import safetensors.torch
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft import PeftModel, VeraConfig, get_peft_model

import make_peft_fixtures  # tools/, beside this script

RANK = 8
PRNG_KEY = 4321
MODEL_SEED = 5
TRAIN_SEED = 23
LAYERS = ["attn.c_attn", "mlp.up", "mlp.square"]
HALF = {"f16": torch.float16, "bf16": torch.bfloat16}


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = Conv1D(20, 12)  # nf (out), nx (in)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(20, 16)
        self.square = nn.Linear(16, 16)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention()
        self.mlp = Mlp()

    def forward(self, x):
        return self.mlp.square(self.mlp.up(self.attn.c_attn(x)))


def versions():
    return make_peft_fixtures.generator_record("tools/make_peft_mixed_fixtures.py", projection_prng_key=PRNG_KEY, r=RANK)


def base_state():
    torch.manual_seed(MODEL_SEED)
    return {k: v.detach().clone().contiguous() for k, v in Mixed().state_dict().items()}


def base_model(state, dtype=torch.float32):
    model = Mixed()
    model.load_state_dict(state)
    return model.to(dtype).eval()


def load(state, directory, dtype=torch.float32):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's fan_in_fan_out override, once per module
        return PeftModel.from_pretrained(base_model(state, dtype), directory).eval()


def merged_weights(model, case):
    weights = model.merge_and_unload(safe_merge=True).state_dict()
    return {f"{case}.{layer}.weight": weights[f"{layer}.weight"].contiguous() for layer in LAYERS}


def write_fixtures(out_dir):
    directory = os.path.join(out_dir, "mixed")
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    meta = versions()
    state = base_state()
    config = VeraConfig(r=RANK, target_modules=LAYERS, projection_prng_key=PRNG_KEY,
                        save_projection=False, init_weights=False, vera_dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base_model(state), config)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if ".vera_lambda_b." in name:
                param.copy_(1.0 + 0.5 * torch.randn(param.shape, generator=generator))
            elif ".vera_lambda_d." in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    adapter_dir = os.path.join(directory, "adapter")
    model.save_pretrained(adapter_dir)
    readme = os.path.join(adapter_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)

    safetensors.torch.save_file(state, os.path.join(directory, "base.safetensors"), metadata=dict(meta, format="pt"))
    for suffix, dtype in HALF.items():
        safetensors.torch.save_file({k: v.to(dtype) for k, v in state.items()},
                                    os.path.join(directory, f"base_{suffix}.safetensors"),
                                    metadata=dict(meta, format="pt"))

    x = torch.randn(3, 12, generator=generator)
    io = {"x": x}
    peft_model = load(state, adapter_dir)
    seen = {}
    hooks = [peft_model.get_submodule(f"base_model.model.{layer}").register_forward_hook(
        lambda module, args, output, layer=layer: seen.update({f"in.{layer}": args[0], f"out.{layer}": output}))
        for layer in LAYERS]
    with torch.no_grad():
        io["y"] = peft_model(x)
    for hook in hooks:
        hook.remove()
    io.update(seen)
    io.update(merged_weights(peft_model, "merged"))
    for suffix, dtype in HALF.items():
        io.update(merged_weights(load(state, adapter_dir, dtype), f"merged_{suffix}"))
    safetensors.torch.save_file({k: v.detach().clone().contiguous() for k, v in io.items()},
                                os.path.join(directory, "io.safetensors"), metadata=dict(meta, format="pt"))
    make_peft_fixtures.finish_fixtures(directory, meta)
    return 0


if __name__ == "__main__":
    sys.exit(make_peft_fixtures.generator_main(write_fixtures, __doc__))
