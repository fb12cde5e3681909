#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Loads the VeRA adapter written by the fashion_mnist example into real PyTorch + PEFT and compares logits.
"""Usage: check_fashion_mnist_peft.py RESULTS_DIR

RESULTS_DIR is the example's --out directory. It holds base_model.safetensors (the frozen
hidden layers and the trained head, nn.Linear names), vera_peft/ (the adapter, seed only) and
check_outputs.safetensors (test images and the logits the C++ program computed). This script
rebuilds the MLP in PyTorch, attaches the adapter with peft.PeftModel.from_pretrained, which
regenerates the projection from projection_prng_key, and checks that PEFT's logits match.
Needs torch, peft and safetensors. Exit status 0 when they match, 1 otherwise.
"""

import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file


class MLP(torch.nn.Module):
    def __init__(self, hidden, classes):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, hidden)
        self.fc2 = torch.nn.Linear(hidden, hidden)
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    out = sys.argv[1]
    base = load_file(os.path.join(out, "base_model.safetensors"))
    model = MLP(base["fc1.weight"].shape[0], base["head.weight"].shape[0])
    model.load_state_dict(base)
    model = PeftModel.from_pretrained(model, os.path.join(out, "vera_peft"))
    model.eval()
    check = load_file(os.path.join(out, "check_outputs.safetensors"))
    with torch.no_grad():
        logits = model(check["inputs"])
    expected = check["logits"]
    scale = max(1.0, expected.abs().max().item())
    gap = (logits - expected).abs().max().item()
    agree = (logits.argmax(1) == expected.argmax(1)).sum().item()
    print(f"PEFT logits vs vera: max |difference| {gap:.3g} (logits up to {scale:.3g}); "
          f"{agree} of {len(expected)} predictions agree")
    return 0 if gap <= 1e-4 * scale else 1


if __name__ == "__main__":
    sys.exit(main())
