#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# PyTorch + PEFT timings for the shapes bench_cuda measures: forward, forward + backward, merge,
# and the cuBLAS floor (one torch matmul), on a CUDA device.
#
# Usage: python3 bench/cuda_vs_peft.py [--dtype float32|bfloat16] [--repeats 20] [--smoke]
#                                       [--device cuda|cpu]
# Needs torch and peft; on the default device (cuda) it exits with a message when no GPU is
# present. `--smoke` times bench_cuda's --smoke shape once, and `--device cpu` runs on the CPU:
# together they check the script and its output format on a machine without a GPU (the times
# then mean nothing).
import argparse
import statistics
import sys
import time

import torch


def median_ms(step, repeats, device, warmup):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def report(name, dtype, what, ms, flops):
    print(f"{name:<8} {dtype:<9} {what:<26} {ms:9.3f} ms {flops / (ms * 1e-3) / 1e12:8.1f} TFLOP/s")


def run(name, n, features_in, features_out, rank, dtype, repeats, device, warmup):
    from peft import VeraConfig, get_peft_model

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(features_in, features_out, bias=False)

        def forward(self, x):
            return self.proj(x)

    model = get_peft_model(Model(), VeraConfig(r=rank, target_modules=["proj"], init_weights=False))
    model = model.to(device=device, dtype=dtype)
    x = torch.randn(n, features_in, device=device, dtype=dtype)
    grad = torch.randn(n, features_out, device=device, dtype=dtype)
    weight = model.base_model.model.proj.base_layer.weight
    layer = model.base_model.model.proj
    label = str(dtype).replace("torch.", "")

    def time_ms(step):
        return median_ms(step, repeats, device, warmup)

    base = 2.0 * n * features_in * features_out
    adapter = 2.0 * n * rank * (features_in + features_out)
    with torch.no_grad():
        report(name, label, "cuBLAS floor X W0^T", time_ms(lambda: x @ weight.t()), base)
        report(name, label, "forward", time_ms(lambda: model(x)), base + adapter)
    x.requires_grad_(True)

    def step():
        model(x).backward(grad)

    report(name, label, "forward + backward", time_ms(step),
           2 * base + adapter + 4.0 * n * features_out * rank + 2.0 * n * rank * features_in)

    def merge():
        layer.merge()
        layer.unmerge()

    # PEFT has no in-place merge without an unmerge to undo it: the pair is timed and halved.
    report(name, label, "merge", time_ms(merge) / 2, 2.0 * features_out * rank * features_in)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="bench_cuda's --smoke shape, timed once")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIPPED: no CUDA device")
        return 0
    dtype = getattr(torch, args.dtype)
    import peft

    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (times not comparable)"
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), peft {peft.__version__}, device {name}")
    if args.smoke:
        run("smoke", 64, 48, 40, 24, dtype, 1, args.device, 0)
        return 0
    run("roberta", 4096, 768, 768, 1024, dtype, args.repeats, args.device, 3)
    run("llama", 4096, 4096, 4096, 256, dtype, args.repeats, args.device, 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
