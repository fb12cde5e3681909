#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Joins bench_cuda's output with cuda_vs_peft.py's (one file per dtype) into the markdown table of
# docs/benchmarks.md: per shape, dtype and operation, vera against PyTorch + PEFT and against the
# cuBLAS floor measured by bench_cuda, with the forward + backward targets marked. vera's rows
# "(low-rank)" are held to the order PEFT and the floor compute; the others run its cost model.
#
# Usage: python3 bench/cuda_table.py VERA_OUTPUT PEFT_OUTPUT [PEFT_OUTPUT ...]
# Needs only the Python standard library.
import re
import sys

LINE = re.compile(r"^(\S+)\s+(\S+)\s+(.+?)\s+([0-9.]+) ms\s+([0-9.]+|inf|nan) TFLOP/s$")
# vera's measurement, PEFT's measurement of the same math, the floor measurement.
OPERATIONS = [
    ("forward", "forward", "floor forward"),
    ("forward (low-rank)", "forward", "floor forward"),
    ("forward + backward", "forward + backward", "floor forward + backward"),
    ("forward + backward (low-rank)", "forward + backward", "floor forward + backward"),
    ("merge", "merge", "floor merge"),
]
STEP_SPEEDUP, STEP_FLOOR = 1.3, 1.15


def read(path):
    """(shape, dtype, measurement) -> milliseconds, and the file's header lines."""
    times, header = {}, []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            match = LINE.match(line)
            if match:
                shape, dtype, what, ms, _ = match.groups()
                times[(shape, dtype, what.strip())] = float(ms)
            elif line.startswith(("device ", "torch ")):
                header.append(line)
    return times, header


def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def cell(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv):
    if len(argv) < 3:
        print("usage: cuda_table.py VERA_OUTPUT PEFT_OUTPUT [PEFT_OUTPUT ...]", file=sys.stderr)
        return 2
    vera, header = read(argv[1])
    peft = {}
    for path in argv[2:]:
        times, lines = read(path)
        peft.update(times)
        header += lines
    if not vera:
        print(f"no measurements in {argv[1]}", file=sys.stderr)
        return 1

    for line in dict.fromkeys(header):
        print(f"- {line}")
    print()
    print("| shape | dtype | operation | vera ms | PEFT ms | PEFT / vera | floor ms | vera / floor |")
    print("|---|---|---|---|---|---|---|---|")
    verdicts = []
    keys = sorted({(shape, dtype) for shape, dtype, _ in vera}, key=lambda k: (k[0] != "roberta", k[1] != "float32", k))
    for shape, dtype in keys:
        for op, peft_op, floor_op in OPERATIONS:
            mine = vera.get((shape, dtype, op))
            theirs = peft.get((shape, dtype, peft_op))
            floor = vera.get((shape, dtype, floor_op))
            speedup, over_floor = ratio(theirs, mine), ratio(mine, floor)
            print(f"| {shape} | {dtype} | {op} | {cell(mine)} | {cell(theirs)} | {cell(speedup, 2)} | "
                  f"{cell(floor)} | {cell(over_floor, 2)} |")
            if op.startswith("forward + backward"):
                verdicts.append((shape, dtype, op, speedup, over_floor))
    print()
    print("Base GEMM X W0^T alone, the same shape in both programs (ms):")
    for shape, dtype in keys:
        mine = vera.get((shape, dtype, "cuBLAS floor X W0^T"))
        theirs = peft.get((shape, dtype, "cuBLAS floor X W0^T"))
        print(f"- {shape} {dtype}: bench_cuda {cell(mine)}, PyTorch {cell(theirs)}")
    print()
    print(f"Forward + backward targets: PEFT / vera >= {STEP_SPEEDUP}, vera / floor <= {STEP_FLOOR}.")
    for shape, dtype, op, speedup, over_floor in verdicts:
        fast = "-" if speedup is None else ("met" if speedup >= STEP_SPEEDUP else "missed")
        near = "-" if over_floor is None else ("met" if over_floor <= STEP_FLOOR else "missed")
        print(f"- {shape} {dtype} {op}: against PEFT {fast}, against the floor {near}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
