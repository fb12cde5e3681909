#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Writes PEFT's outputs for one VeRA layer of a bfloat16 model under tests/fixtures/peft/.
"""Golden files for the bfloat16 layer path, made with real torch and peft (the peer venv of
scripts/make-peer-venv.sh):

    ../peer-venv/bin/python tools/make_peft_bf16_layer_fixtures.py [--out DIR]

A bias-carrying nn.Linear is cast to bfloat16 and adapted with VeRA (PEFT keeps lambda_b,
lambda_d, vera_A and vera_B in float32), exactly as bench/peft_cpu.py builds its layers; one file
per shape, bf16_layer_<name>.safetensors, holds X, W0, bias, G (bfloat16), the vectors and the
projection slices PEFT used, and PEFT's Y, grad_lambda_b, grad_lambda_d, grad_X and its
merge_and_unload weight. tests/io/peft_test.cpp runs vera's bfloat16 layer on the same operands.
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import peft_cpu  # noqa: E402  (the layer builder and fixture writer the benchmark uses)

# name: (n, in, out, r); rank below and above the feature counts, and a single row.
SHAPES = {
    "small": (9, 40, 24, 16),
    "wide_rank": (5, 24, 40, 64),
    "one_row": (1, 40, 24, 16),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "peft"))
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, dims in SHAPES.items():
        pm, layer, x, g = peft_cpu.build_single(*dims, peft_cpu.DTYPES["bfloat16"])
        path = os.path.join(args.out, f"bf16_layer_{name}.safetensors")
        peft_cpu.write_fixture(path, name, dims, "bfloat16", pm, layer, x, g)
        print("wrote", path)


if __name__ == "__main__":
    main()
