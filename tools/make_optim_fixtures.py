#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Writes tests/fixtures/optim/torch_optim.txt: PyTorch's SGD and AdamW trajectories for vera's optimizer tests.
"""Golden trajectories of torch.optim.SGD and torch.optim.AdamW in float64.

    make_optim_fixtures.py [--out FILE]

Each case runs one optimizer for a few steps on two parameters (one with weight decay, one in a
group without), feeding fixed pseudo-random gradients, and records the parameters after every
step. The text format is read by tests/optim/optim.cpp:

    case NAME OPTIMIZER lr momentum dampening weight_decay nesterov beta1 beta2 eps STEPS
    param DECAY SIZE v0 v1 ...            (initial values; one line per parameter)
    grad STEP PARAM g0 g1 ...             (gradient fed at STEP)
    value STEP PARAM p0 p1 ...            (parameter after STEP)
"""

import argparse
import os

import torch

CASES = [
    # name, optimizer, lr, momentum, dampening, weight_decay, nesterov, beta1, beta2, eps
    ("sgd_plain", "sgd", 0.1, 0.0, 0.0, 0.0, False, 0, 0, 0),
    ("sgd_momentum_decay", "sgd", 0.05, 0.9, 0.0, 0.01, False, 0, 0, 0),
    ("sgd_dampening", "sgd", 0.05, 0.8, 0.3, 0.0, False, 0, 0, 0),
    ("sgd_nesterov", "sgd", 0.02, 0.9, 0.0, 0.05, True, 0, 0, 0),
    ("adamw_default", "adamw", 1e-3, 0, 0, 1e-2, False, 0.9, 0.999, 1e-8),
    ("adamw_tuned", "adamw", 3e-2, 0, 0, 0.1, False, 0.8, 0.95, 1e-6),
    ("adamw_no_decay", "adamw", 1e-2, 0, 0, 0.0, False, 0.9, 0.999, 1e-8),
]
STEPS = 6
SIZES = (7, 3)


def fmt(values):
    return " ".join(repr(float(v)) for v in values)


def run_case(case, gen, out):
    name, kind, lr, momentum, dampening, wd, nesterov, beta1, beta2, eps = case
    params = [torch.randn(n, generator=gen, dtype=torch.float64).requires_grad_() for n in SIZES]
    groups = [{"params": [params[0]]}, {"params": [params[1]], "weight_decay": 0.0}]
    if kind == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, dampening=dampening,
                              weight_decay=wd, nesterov=nesterov)
    else:
        opt = torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd)
    out.write(f"case {name} {kind} {lr!r} {momentum!r} {dampening!r} {wd!r} {int(nesterov)} "
              f"{beta1!r} {beta2!r} {eps!r} {STEPS}\n")
    for k, p in enumerate(params):
        out.write(f"param {1 if k == 0 else 0} {p.numel()} {fmt(p.detach())}\n")
    for step in range(1, STEPS + 1):
        for k, p in enumerate(params):
            # Gradients of varied scale, including an exact zero, so eps and zero moments matter.
            g = torch.randn(p.numel(), generator=gen, dtype=torch.float64) * (0.1 * step)
            g[0] = 0.0 if step == 2 else g[0]
            p.grad = g
            out.write(f"grad {step} {k} {fmt(g)}\n")
        opt.step()
        for k, p in enumerate(params):
            out.write(f"value {step} {k} {fmt(p.detach())}\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "optim",
                                                      "torch_optim.txt"))
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(20261125)
    with open(args.out, "w", encoding="ascii") as out:
        out.write(f"# torch {torch.__version__}; written by tools/make_optim_fixtures.py\n")
        for case in CASES:
            run_case(case, gen, out)


if __name__ == "__main__":
    main()
