#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Writes the PEFT golden files for models with several VeRA adapters and half-precision merges.
"""Golden files for two VeRA adapters on one model and for merges into float16/bfloat16 models,
made with real torch, peft and safetensors.

    make_peft_multi_fixtures.py [--out DIR]    write DIR/multi (default: tests/fixtures/peft/multi)

The model is a stack of nn.Linear layers with biases, q (16 -> 12), up (12 -> 20), down
(20 -> 8), run one after the other. Two adapters, both r = 8 and projection_prng_key 77:

    first     targets q, up and down: PEFT sizes the shared pair for them, A 8 x 20, B 20 x 8
    second    added with add_adapter, targets q only (16 -> 12); its file holds the shared pair,
              larger than q needs, which q slices

Both save the projection (float32); `first_seed` is `first` saved seed only. lambda_b = 1 +
0.5 N(0, 1), lambda_d = N(0, 1). The directory holds the adapter directories, `base.safetensors`
(float32 weights) and its float16 and bfloat16 copies, and `io.safetensors`, all computed by PEFT
from the saved adapter directories loaded onto a fresh base model:

    x                               the input (3 x 16)
    y_first, y_second, y_both       the model's output with first, second, or both active
    <case>.<layer>.weight           merge_and_unload() weights of the adapted layers, cases:
      merged_second                 second alone (loaded after first, as PEFT requires)
      merged_both                   both active: first merged, then second
      merged_f16_seed               first_seed onto the float16 model
      merged_bf16_seed              first_seed onto the bfloat16 model
      merged_f16_projection         first (float32 projection) onto the float16 model
      merged_bf16_projection        first onto the bfloat16 model
      merged_bf16_both              first and second onto the bfloat16 model, both merged
"""

import os
import shutil
import sys

import safetensors.torch
import torch
from torch import nn

from peft import PeftModel, VeraConfig, get_peft_model

import make_peft_fixtures  # tools/, beside this script

RANK = 8
PRNG_KEY = 77
MODEL_SEED = 3
TRAIN_SEED = 17
LAYERS = {"q": (16, 12), "up": (12, 20), "down": (20, 8)}
HALF = {"f16": torch.float16, "bf16": torch.bfloat16}


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        for name, (fan_in, fan_out) in LAYERS.items():
            setattr(self, name, nn.Linear(fan_in, fan_out))

    def forward(self, x):
        return self.down(self.up(self.q(x)))


def versions():
    return make_peft_fixtures.generator_record("tools/make_peft_multi_fixtures.py", projection_prng_key=PRNG_KEY, r=RANK)


def base_state():
    torch.manual_seed(MODEL_SEED)
    return {k: v.detach().clone() for k, v in Stack().state_dict().items()}


def base_model(state, dtype=torch.float32):
    model = Stack()
    model.load_state_dict(state)
    return model.to(dtype).eval()


def config(targets, save_projection=True):
    return VeraConfig(r=RANK, target_modules=targets, projection_prng_key=PRNG_KEY,
                      save_projection=save_projection, init_weights=False, vera_dropout=0.0)


def perturb(model, adapter, generator):
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if f".vera_lambda_b.{adapter}" in name:
                param.copy_(1.0 + 0.5 * torch.randn(param.shape, generator=generator))
            elif f".vera_lambda_d.{adapter}" in name:
                param.copy_(torch.randn(param.shape, generator=generator))


def save(model, adapter, directory):
    # save_pretrained writes a non-default adapter into a subdirectory named after it.
    staging = directory + ".staging"
    model.save_pretrained(staging, selected_adapters=[adapter])
    source = staging if adapter == "default" else os.path.join(staging, adapter)
    os.makedirs(directory)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.move(os.path.join(source, name), os.path.join(directory, name))
    shutil.rmtree(staging)


def load(state, directories, active, dtype=torch.float32):
    """PEFT's model with the adapters in `directories` (name -> dir, in load order) and `active`."""
    names = list(directories)
    model = PeftModel.from_pretrained(base_model(state, dtype), directories[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(directories[name], adapter_name=name)
    model.base_model.set_adapter(active)
    return model.eval()


def merged_weights(model, case):
    weights = model.merge_and_unload().state_dict()
    return {f"{case}.{layer}.weight": weights[f"{layer}.weight"].contiguous() for layer in LAYERS}


def write_fixtures(out_dir):
    directory = os.path.join(out_dir, "multi")
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    meta = versions()
    state = base_state()
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    model = get_peft_model(base_model(state), config(list(LAYERS)))
    perturb(model, "default", generator)
    model.add_adapter("second", config(["q"]))
    perturb(model, "second", generator)
    dirs = {name: os.path.join(directory, name) for name in ("first", "second", "first_seed")}
    save(model, "default", dirs["first"])
    save(model, "second", dirs["second"])
    seed_only = get_peft_model(base_model(state), config(list(LAYERS), save_projection=False))
    seed_only.load_state_dict(model.state_dict(), strict=False)
    save(seed_only, "default", dirs["first_seed"])

    safetensors.torch.save_file(state, os.path.join(directory, "base.safetensors"), metadata=dict(meta, format="pt"))
    for suffix, dtype in HALF.items():
        safetensors.torch.save_file({k: v.to(dtype) for k, v in state.items()},
                                    os.path.join(directory, f"base_{suffix}.safetensors"),
                                    metadata=dict(meta, format="pt"))

    both = {"first": dirs["first"], "second": dirs["second"]}
    x = torch.randn(3, LAYERS["q"][0], generator=generator)
    io = {"x": x}
    with torch.no_grad():
        io["y_first"] = load(state, both, "first")(x)
        io["y_second"] = load(state, both, "second")(x)
        io["y_both"] = load(state, both, ["first", "second"])(x)
    io.update(merged_weights(load(state, both, "second"), "merged_second"))
    io.update(merged_weights(load(state, both, ["first", "second"]), "merged_both"))
    for suffix, dtype in HALF.items():
        io.update(merged_weights(load(state, {"first": dirs["first_seed"]}, "first", dtype), f"merged_{suffix}_seed"))
        io.update(merged_weights(load(state, {"first": dirs["first"]}, "first", dtype), f"merged_{suffix}_projection"))
    io.update(merged_weights(load(state, both, ["first", "second"], torch.bfloat16), "merged_bf16_both"))
    safetensors.torch.save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(directory, "io.safetensors"),
                                metadata=dict(meta, format="pt"))
    make_peft_fixtures.finish_fixtures(directory, meta)
    return 0


if __name__ == "__main__":
    sys.exit(make_peft_fixtures.generator_main(write_fixtures, __doc__))
