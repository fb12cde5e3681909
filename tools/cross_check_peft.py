#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# The `vera` command-line tool against real PEFT on configurations drawn at random.
"""Checks `vera projection`, `vera merge` and `vera export-lora` against PEFT on random cases.

    cross_check_peft.py VERA_BINARY [--cases 20] [--seed 5]

Each case draws a projection_prng_key (small, 31-bit, above 2^32, or any 62-bit value), a rank
from 1 to 64 and a stack of one to three nn.Linear layers of 1 to 70 features (bias on every
other layer), a storage dtype for the base weights (float32, float16 or bfloat16) and lambda_b,
lambda_d from N(0, 1). Then:
  - projection: `vera projection` with PEFT's max_in, max_out must equal PEFT's vera_A and
    vera_B bit for bit (under the fused or the separate rounding; the one that matched is shown);
  - merge: `vera merge` of PEFT's saved adapter, seed only and with its float32 projection, into
    the base weights in the drawn dtype, against PEFT's merge_and_unload on the same dtype:
    bit-exact or within 1e-6 (float32), 2e-3 (float16), 1e-2 (bfloat16) of the largest weight;
  - export-lora: the LoRA adapter `vera export-lora` writes, loaded by PEFT on the float32 base,
    must give the VeRA model's outputs within 1e-5 of the largest output.
Needs torch, peft and safetensors; exits 1 when a case fails.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel, VeraConfig, get_peft_model
from safetensors.torch import load_file, save_file

MERGE_TOLERANCE = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}
LORA_TOLERANCE = 1e-5


class Stack(torch.nn.Module):
    def __init__(self, shapes):
        super().__init__()
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(i, o, bias=(k % 2 == 0)) for k, (i, o) in enumerate(shapes))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def stack_with(shapes, state, dtype=torch.float32):
    model = Stack(shapes)
    model.load_state_dict(state)
    return model.to(dtype).eval()


def relative(got, want):
    return ((got.double() - want.double()).abs().max() / (want.double().abs().max() + 1e-30)).item()


def check_case(vera, work, draw, case):
    seed = draw.choice([0, 1, 7, 1234, 2**31 - 1, 2**32 + 5, draw.randrange(2**62)])
    rank = draw.choice([1, 2, 3, 5, 8, 16, 33, 64])
    dims = [draw.randint(1, 70) for _ in range(draw.randint(2, 4))]
    shapes = list(zip(dims[:-1], dims[1:]))
    dtype = draw.choice([torch.float32, torch.float16, torch.bfloat16])
    torch.manual_seed(case)
    state = Stack(shapes).state_dict()

    def adapted(save_projection, lambdas=None):
        config = VeraConfig(r=rank, target_modules=[f"layers.{k}" for k in range(len(shapes))],
                            projection_prng_key=seed, save_projection=save_projection,
                            init_weights=False)
        adapted_model = get_peft_model(stack_with(shapes, state), config).eval()
        with torch.no_grad():
            for name, parameter in adapted_model.named_parameters():
                if "vera_lambda" in name:
                    parameter.copy_(lambdas[name] if lambdas else torch.randn_like(parameter))
        return adapted_model

    model = adapted(False)
    a = model.base_model.vera_A["default"]
    b = model.base_model.vera_B["default"]
    failures = []

    def vera_cli(*args):
        result = subprocess.run([vera, *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"vera {' '.join(args)} failed: {result.stderr.strip()}")

    projection = os.path.join(work, "projection.safetensors")
    matched = None
    for rounding in ("fused", "separate"):
        vera_cli("projection", "--seed", str(seed), "--r", str(rank), "--max-in", str(a.shape[1]),
                 "--max-out", str(b.shape[0]), "--rounding", rounding, "-o", projection)
        tensors = load_file(projection)
        if torch.equal(tensors["vera_A"], a) and torch.equal(tensors["vera_B"], b):
            matched = rounding
            break
    if matched is None:
        failures.append("projection differs from PEFT's")

    adapter = os.path.join(work, f"adapter{case}")
    model.save_pretrained(adapter)
    # The same lambdas with the projection saved (float32): PEFT then merges with it unrounded.
    saved = os.path.join(work, f"adapter{case}_projection")
    adapted(True, dict(model.named_parameters())).save_pretrained(saved)
    base32 = os.path.join(work, "base32.safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, base32)
    base = base32
    if dtype != torch.float32:
        base = os.path.join(work, "base.safetensors")
        save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, base)
    merge_results = []
    for kind, directory in (("seed", adapter), ("saved", saved)):
        merged_file = os.path.join(work, "merged.safetensors")
        vera_cli("merge", "--base", base, "--adapter", directory, "-o", merged_file)
        merged = load_file(merged_file)
        reference = PeftModel.from_pretrained(stack_with(shapes, state, dtype), directory).merge_and_unload()
        worst, exact = 0.0, True
        for name, want in reference.state_dict().items():
            got = merged.get(name)
            if got is None or got.dtype != want.dtype or got.shape != want.shape:
                failures.append(f"merge ({kind}): {name} missing or of another dtype/shape")
                continue
            exact = exact and torch.equal(got, want)
            worst = max(worst, relative(got, want))
        if worst > MERGE_TOLERANCE[dtype]:
            failures.append(f"merge ({kind}) differs from PEFT's by {worst:.2e}")
        merge_results.append(f"{kind} {'bit-exact' if exact else f'{worst:.1e}'}")

    lora_dir = os.path.join(work, f"lora{case}")
    vera_cli("export-lora", adapter, "-o", lora_dir, "--base", base32)
    lora = PeftModel.from_pretrained(stack_with(shapes, state), lora_dir).eval()
    x = torch.randn(5, shapes[0][0])
    with torch.no_grad():
        lora_error = relative(lora(x), model(x))
    if lora_error > LORA_TOLERANCE:
        failures.append(f"export-lora outputs differ by {lora_error:.2e}")

    dtype_name = str(dtype).replace("torch.", "")
    print(f"case {case}: key {seed}, r {rank}, layers {shapes}, {dtype_name}: projection "
          f"{'bit-exact (' + matched + ')' if matched else 'DIFFERS'}; merge "
          f"{', '.join(merge_results)}; export-lora {lora_error:.1e}"
          + ("" if not failures else "  FAILED: " + "; ".join(failures)))
    return not failures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vera", help="the vera command-line tool (build/default/tools/vera)")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5, help="seed of the drawn configurations")
    args = parser.parse_args()
    import peft

    print(f"torch {torch.__version__}, peft {peft.__version__}, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    draw = random.Random(args.seed)
    work = tempfile.mkdtemp()
    try:
        failed = sum(not check_case(args.vera, work, draw, case) for case in range(args.cases))
    finally:
        shutil.rmtree(work)
    print(f"{args.cases - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
