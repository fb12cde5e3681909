#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Times PEFT's VeRA layer on the CPU (the "peer" side of bench/vs_peft.py) and writes safetensors
# fixtures with PEFT's own outputs so a C++ contender can check it computes the same thing.
#
# Usage (with the venv from scripts/make-peer-venv.sh):
#   ../peer-venv/bin/python bench/peft_cpu.py [--shape NAME ...] [--dtype float32|bfloat16]
#       [--threads N] [--repeats 20] [--warmup 3] [--fixture-dir DIR] [--no-fixture-for NAME ...]
#       [--op NAME ...] [--no-info] [--smoke]
# Prints JSON lines: one {"side":"peft","info":{...}} line, then one line per (shape, op).
#
# What a PEFT 0.21.2 user gets for a bfloat16 model on the CPU (checked with the installed peft by
# tracing every torch call of forward, get_delta_weight and merge; paths are under
# site-packages/peft/):
#   * get_peft_model's default autocast_adapter_dtype=True upcasts every float16/bfloat16 adapter
#     tensor to float32 (peft_model.py l.179-182 calls tuners/tuners_utils.py cast_adapter_dtype,
#     l.2705-2763), and that covers the BufferDict entries too (l.2747-2750), not only the
#     nn.Parameters (l.2739-2745). update_layer (vera/layer.py l.132) first moved them to the base
#     layer's bf16 (_move_adapter_to_device_of_base_layer, tuners_utils.py l.2168-2212, which loops
#     over adapter_layer_names + other_param_names, i.e. also vera_A/vera_B), and the upcast runs
#     after that. So vera_lambda_b [out], vera_lambda_d [r], vera_A [r,in_max] and
#     vera_B [out_max,r] are all float32; only base_layer.weight/bias stay bfloat16. vera_A and
#     vera_B hold bf16-rounded values (drawn in f32, rounded to bf16 by that move, widened back),
#     so they differ from the float32 model's A/B; the fixtures store the values the layer uses.
#   * forward (tuners/vera/layer.py l.253-289):
#       result = base_layer(x)                  F.linear(bf16 x, bf16 W0, bf16 b) -> bf16
#       x = _cast_input_dtype(x, lambda_d.dtype) x.to(float32)
#       result = result + lambda_b * F.linear(lambda_d * F.linear(x, A), B)
#                F.linear(f32, f32) -> f32, * f32 lambda_d, F.linear(f32, f32) -> f32,
#                * f32 lambda_b;
#                bf16 result + f32 -> f32 (promotion)
#       result = result.to(orig_dtype)          -> bf16
#     i.e. y = bf16( f32(bf16(x W0^T + b)) + lambda_b * ((x A^T) * lambda_d) B^T ), the whole
#     adapter branch in float32, the base GEMM rounded to bf16 before the add (two roundings).
#   * backward: dL/dy (bf16) is widened to f32 by the .to() backward, so grad_lambda_b and
#     grad_lambda_d are float32 and computed from f32 values; grad_x is the bf16 grad of the base
#     F.linear (g @ W0 in bf16) plus the f32 adapter grad rounded to bf16 by the .to(float32)
#     backward, summed in bf16 by autograd.
#   * get_delta_weight (layer.py l.214-251): dtype = vera_B.dtype, which is float32 after the
#     upcast, so the cast_to_fp32 branch (l.231) is not even taken; it returns float32
#     (lambda_b * B) @ (lambda_d * A).
#   * merge (layer.py l.197-199): weight = base weight (bf16 .data); weight += delta (f32): the
#     in-place add computes in f32 and rounds to bf16, so merged = bf16(f32(W0) + delta);
#     merge_and_unload gives exactly that.
# On a float32 model every tensor is float32.
import argparse
import copy
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

SEED = 20240611
ADAPTER = "default"

# name: (n, in, out, r)
SHAPES = {
    "roberta_r1024": (512, 768, 768, 1024),
    "roberta_r256": (512, 768, 768, 256),
    "llama": (512, 4096, 4096, 256),
    "ffn": (512, 768, 3072, 256),
    "batch16": (16, 768, 768, 256),
    "batch1": (1, 768, 768, 256),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
OPS = ["forward", "fwd_bwd_bd", "fwd_bwd_bdx", "merge", "sibling", "floor"]


class Single(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=True)

    def forward(self, x):
        return self.proj(x)


class Sibling(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.q = nn.Linear(d_in, d_out, bias=True)
        self.k = nn.Linear(d_in, d_out, bias=True)
        self.v = nn.Linear(d_in, d_out, bias=True)

    def forward(self, x):
        return self.q(x), self.k(x), self.v(x)


def wrap(model, r, targets, dtype):
    from peft import VeraConfig, get_peft_model

    # Cast before get_peft_model, as a user loading a bf16 checkpoint does: that order is what
    # makes PEFT's autocast keep the adapter in float32.
    model = model.to(dtype)
    config = VeraConfig(
        r=r,
        target_modules=targets,
        projection_prng_key=SEED,
        init_weights=False,
        save_projection=True,
    )
    return get_peft_model(model, config)


def median_ms(step, repeats, warmup, reset=None):
    for _ in range(warmup):
        if reset:
            reset()
        step()
    times = []
    for _ in range(repeats):
        if reset:
            reset()
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cpu_model_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


_PROBE = r"""
import sys, torch, torch.nn.functional as F
torch.set_num_threads(int(sys.argv[1]))
for name in ("bfloat16", "float32"):
    dt = getattr(torch, name)
    x = torch.randn(512, 768).to(dt)
    w = torch.randn(768, 768).to(dt)
    g = torch.randn(512, 768).to(dt)
    print("@@probe", name, "linear", flush=True)
    F.linear(x, w)
    sys.stdout.flush()
    print("@@probe", name, "mm", flush=True)
    torch.matmul(g, w)
    sys.stdout.flush()
print("@@probe end", flush=True)
# A convolution this size goes through oneDNN (tiny ones do not), so its info lines name the ISA
# oneDNN dispatches to.
F.conv2d(torch.randn(1, 64, 28, 28), torch.randn(64, 64, 3, 3))
sys.stdout.flush()
"""


def probe_kernels(threads):
    """Which oneDNN primitive (if any) torch's matmuls ran, read from ONEDNN_VERBOSE output.

    Torch only routes CPU matmuls to oneDNN on some CPUs (bf16 needs AVX512-BF16/AMX-class ISAs);
    elsewhere they fall back to MKL (f32) or ATen's own gemm loops (bf16), and no verbose line
    appears. That difference decides what the bf16 timings mean.
    """
    env = dict(os.environ, ONEDNN_VERBOSE="1", DNNL_VERBOSE="1")
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, str(threads)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": str(e)}
    found = {}
    isa = None
    current = None
    for line in out.splitlines():
        if line.startswith("@@probe"):
            parts = line.split()
            current = None if parts[1] == "end" else (parts[1], parts[2])
            continue
        fields = line.split(",")
        if not fields[0].endswith("_verbose"):
            continue
        m = re.search(r"isa:([^,]+)", line)
        if m:
            isa = m.group(1)
        if "exec" not in fields or current is None:
            continue
        i = fields.index("exec")
        # Layout after "exec": engine, operation, implementation, ...
        if len(fields) > i + 3:
            op, impl = fields[i + 2], fields[i + 3]
            if op in ("matmul", "inner_product", "gemm"):
                found.setdefault(current, []).append(f"{op}:{impl}")
    kernels = {}
    mkl = torch.backends.mkl.is_available()
    for dt in ("bfloat16", "float32"):
        entry = {}
        for layout in ("linear", "mm"):
            impls = found.get((dt, layout))
            if impls:
                entry[layout] = "onednn " + " ".join(sorted(set(impls)))
            elif dt == "float32" and mkl:
                entry[layout] = "mkl"
            else:
                entry[layout] = "aten (no oneDNN primitive ran)"
        kernels[dt] = entry
    return {"kernels": kernels, "onednn_isa": isa}


def adapter_dtypes(dtype):
    """The dtypes PEFT actually gives the adapter tensors for a model of this dtype."""
    pm = wrap(Single(16, 8), 4, ["proj"], dtype)
    layer = pm.base_model.model.proj
    return {
        "base_weight": str(layer.base_layer.weight.dtype).replace("torch.", ""),
        "lambda_b": str(layer.vera_lambda_b[ADAPTER].dtype).replace("torch.", ""),
        "lambda_d": str(layer.vera_lambda_d[ADAPTER].dtype).replace("torch.", ""),
        "vera_A": str(layer.vera_A[ADAPTER].dtype).replace("torch.", ""),
        "vera_B": str(layer.vera_B[ADAPTER].dtype).replace("torch.", ""),
    }


def info_line(dtypes, threads, warmup):
    import peft

    info = {
        "torch": torch.__version__,
        "peft": peft.__version__,
        "cpu": cpu_model_name(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        # Torch has no separate "onednn" backend module; mkldnn is oneDNN under its old name.
        "onednn_available": getattr(torch.backends, "onednn", torch.backends.mkldnn).is_available(),
        "mkl_available": torch.backends.mkl.is_available(),
        "threads": threads,
        "interop_threads": torch.get_num_interop_threads(),
        "warmup": warmup,
        "adapter_dtypes": {d: adapter_dtypes(DTYPES[d]) for d in dtypes},
    }
    info.update(probe_kernels(threads))
    return {"side": "peft", "info": info}


def make_inputs(n, d_in, d_out, r, dtype):
    # Drawn in f32 from one seed and cast afterwards, so the f32 and bf16 fixtures share values;
    # all draws happen before PEFT runs, so PEFT's own RNG use cannot shift them.
    torch.manual_seed(SEED)
    x = torch.randn(n, d_in)
    w0 = torch.randn(d_out, d_in) / math.sqrt(d_in)
    bias = torch.randn(d_out)
    g = torch.randn(n, d_out)
    lambda_d = torch.randn(r)
    lambda_b = torch.ones(d_out) + 0.1 * torch.randn(d_out)
    return x.to(dtype), w0, bias, g.to(dtype), lambda_d, lambda_b


def build_single(n, d_in, d_out, r, dtype):
    x, w0, bias, g, lambda_d, lambda_b = make_inputs(n, d_in, d_out, r, dtype)
    base = Single(d_in, d_out)
    with torch.no_grad():
        base.proj.weight.copy_(w0)
        base.proj.bias.copy_(bias)
    pm = wrap(base, r, ["proj"], dtype)
    layer = pm.base_model.model.proj
    with torch.no_grad():
        # copy_ keeps the parameter's own (PEFT-chosen) dtype.
        layer.vera_lambda_d[ADAPTER].copy_(lambda_d)
        layer.vera_lambda_b[ADAPTER].copy_(lambda_b)
    return pm, layer, x, g


def build_sibling(n, d_in, d_out, r, dtype):
    torch.manual_seed(SEED + 1)
    base = Sibling(d_in, d_out)
    with torch.no_grad():
        for lin in (base.q, base.k, base.v):
            lin.weight.copy_(torch.randn(d_out, d_in) / math.sqrt(d_in))
            lin.bias.copy_(torch.randn(d_out))
    pm = wrap(base, r, ["q", "k", "v"], dtype)
    inner = pm.base_model.model
    with torch.no_grad():
        for lin in (inner.q, inner.k, inner.v):
            lin.vera_lambda_d[ADAPTER].copy_(torch.randn(r))
            lin.vera_lambda_b[ADAPTER].copy_(torch.ones(d_out) + 0.1 * torch.randn(d_out))
    x = torch.randn(n, d_in).to(dtype)
    gs = [torch.randn(n, d_out).to(dtype) for _ in range(3)]
    return inner, x, gs


def write_fixture(path, shape_name, dims, dtype_name, pm, layer, x, g):
    from safetensors.torch import save_file

    n, d_in, d_out, r = dims
    with torch.no_grad():
        y = layer(x)
    xg = x.detach().clone().requires_grad_(True)
    (layer(xg) * g).sum().backward()
    lb, ld = layer.vera_lambda_b[ADAPTER], layer.vera_lambda_d[ADAPTER]
    grads = {"grad_lambda_b": lb.grad.clone(), "grad_lambda_d": ld.grad.clone(), "grad_x": xg.grad}
    lb.grad = None
    ld.grad = None
    # merge_and_unload on a copy, so the fixture is literally what a user's merged model holds.
    merged = copy.deepcopy(pm).merge_and_unload().proj.weight.detach()
    tensors = {
        "x": x,
        "w0": layer.base_layer.weight.detach(),
        "bias": layer.base_layer.bias.detach(),
        "g": g,
        "lambda_b": lb.detach(),
        "lambda_d": ld.detach(),
        "vera_A": layer.vera_A[ADAPTER][:, :d_in],
        "vera_B": layer.vera_B[ADAPTER][:d_out, :],
        "y": y,
        "merged": merged,
        **grads,
    }
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    meta = {
        "seed": str(SEED),
        "n": str(n),
        "in": str(d_in),
        "out": str(d_out),
        "r": str(r),
        "dtype": dtype_name,
        "shape": shape_name,
        "peft": __import__("peft").__version__,
        "torch": torch.__version__,
    }
    save_file(tensors, path, metadata=meta)


def time_shape(name, dims, dtype_name, args, emit):
    n, d_in, d_out, r = dims
    dtype = DTYPES[dtype_name]
    pm, layer, x, g = build_single(n, d_in, d_out, r, dtype)

    if args.fixture_dir and name not in args.no_fixture_for:
        os.makedirs(args.fixture_dir, exist_ok=True)
        write_fixture(
            os.path.join(args.fixture_dir, f"{name}_{dtype_name}.safetensors"),
            name, dims, dtype_name, pm, layer, x, g,
        )

    lambdas = [layer.vera_lambda_b[ADAPTER], layer.vera_lambda_d[ADAPTER]]

    wanted = set(args.op or OPS)

    def timed(op, step, reset=None):
        if op in wanted:
            report(op, median_ms(step, args.repeats, args.warmup, reset))

    def report(op, ms):
        emit({"side": "peft", "shape": name, "n": n, "in": d_in, "out": d_out, "r": r,
              "dtype": dtype_name, "threads": torch.get_num_threads(), "op": op,
              "ms": round(ms, 4)})

    # The tuner layer is called directly: PeftModel's wrapper only adds Python plumbing that is not
    # VeRA's cost and that the C++ side has no counterpart for.
    def forward():
        with torch.no_grad():
            layer(x)

    timed("forward", forward)

    # Gradients are cleared outside the timed region: zero_grad belongs to the optimizer step.
    def clear(params):
        def reset():
            for p in params:
                p.grad = None
        return reset

    def fwd_bwd_bd():
        (layer(x) * g).sum().backward()

    timed("fwd_bwd_bd", fwd_bwd_bd, clear(lambdas))

    xg = x.detach().clone().requires_grad_(True)

    def fwd_bwd_bdx():
        (layer(xg) * g).sum().backward()

    timed("fwd_bwd_bdx", fwd_bwd_bdx, clear(lambdas + [xg]))

    # merge() does `weight += get_delta_weight()` on the live weight without no_grad; a fresh clone
    # per run (untimed) keeps every run identical.
    holder = {}

    def fresh_weight():
        holder["w"] = layer.get_base_weight().clone()

    def merge():
        w = holder["w"]
        w += layer.get_delta_weight(ADAPTER)

    timed("merge", merge, fresh_weight)

    del pm, layer
    if "sibling" in wanted:
        inner, xs, gs = build_sibling(n, d_in, d_out, r, dtype)
        xs.requires_grad_(True)
        sib_params = [p for p in inner.parameters() if p.requires_grad] + [xs]

        def sibling():
            ys = inner(xs)
            sum((y * gi).sum() for y, gi in zip(ys, gs)).backward()

        timed("sibling", sibling, clear(sib_params))
        del inner

    w0 = torch.randn(d_out, d_in).to(dtype)
    xf = torch.randn(n, d_in).to(dtype)
    gf = torch.randn(n, d_out).to(dtype)

    # The same two GEMMs (and memory layouts) autograd runs for the frozen base layer in
    # fwd_bwd_bdx, without VeRA or autograd: PyTorch's own GEMM rate for this shape and dtype.
    def floor():
        torch.matmul(xf, w0.t())
        torch.matmul(gf, w0)

    timed("floor", floor)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), default=None)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--fixture-dir", default=None)
    parser.add_argument("--no-fixture-for", action="append", default=[], choices=sorted(SHAPES))
    parser.add_argument("--smoke", action="store_true")
    # Lets one slow cell be re-run alone (bf16 GEMMs on CPUs without AVX512-BF16 take minutes).
    parser.add_argument("--op", action="append", choices=OPS, default=None,
                        help="time only these ops (default: all)")
    parser.add_argument("--no-info", action="store_true", help="skip the info line (and its probe)")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        # Inter-op threads would only compete with the intra-op pool on a small machine.
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already fixed once any parallel work has run

    shapes = args.shape
    if args.smoke:
        args.repeats = 2
        if not shapes:
            shapes = [min(SHAPES, key=lambda s: math.prod(SHAPES[s]))]
    if not shapes:
        shapes = list(SHAPES)

    def emit(obj):
        print(json.dumps(obj), flush=True)

    if not args.no_info:
        emit(info_line(list(DTYPES), torch.get_num_threads(), args.warmup))
    for name in shapes:
        time_shape(name, SHAPES[name], args.dtype, args, emit)


if __name__ == "__main__":
    main()
