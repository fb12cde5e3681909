#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Plots the Fashion-MNIST example's results: accuracy against trainable parameters, and learning curves.
"""Usage: plot_fashion_mnist.py RESULTS_DIR [-o FILE.png]

Reads RESULTS_DIR/summary.csv and RESULTS_DIR/curves.csv written by the fashion_mnist example
and writes a two-panel PNG (default RESULTS_DIR/fashion_mnist.png). Needs matplotlib
(Debian: python3-matplotlib).
"""

import argparse
import csv
import os

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Label offsets in points, so that nearby methods stay readable.
OFFSET = {"vera": (8, 8), "vera_dinit": (8, -4), "vera_d": (-10, -16), "lora8": (8, 4)}

STYLE = {
    "head": ("tab:gray", "s"),
    "vera": ("tab:red", "o"),
    "vera_b": ("lightcoral", "v"),
    "vera_d": ("firebrick", "^"),
    "vera_dinit": ("salmon", "D"),
    "lora1": ("tab:cyan", "o"),
    "lora8": ("tab:blue", "o"),
    "full": ("black", "*"),
}


def read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    summary = read(os.path.join(args.results, "summary.csv"))
    curves = read(os.path.join(args.results, "curves.csv"))
    output = args.output or os.path.join(args.results, "fashion_mnist.png")

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for row in summary:
        color, marker = STYLE.get(row["key"], ("tab:green", "o"))
        x, y = int(row["trainable"]), 100 * float(row["accuracy"])
        left.scatter([x], [y], color=color, marker=marker, s=70, zorder=3)
        left.annotate(row["method"], (x, y), textcoords="offset points",
                      xytext=OFFSET.get(row["key"], (6, 4)), fontsize=8,
                      ha="right" if row["key"] == "full" else "left")
    left.set_xscale("log")
    xs = [int(row["trainable"]) for row in summary]
    if xs:
        left.set_xlim(min(xs) / 1.5, max(xs) * 2.5)
    left.set_xlabel("trainable parameters (log scale)")
    left.set_ylabel("target test accuracy (%)")
    left.set_title("Accuracy against trainable parameters")
    left.grid(True, which="both", alpha=0.3)

    by_method = {}
    for row in curves:
        by_method.setdefault((row["key"], row["method"]), []).append(
            (int(row["epoch"]), 100 * float(row["test_accuracy"])))
    for (key, label), points in by_method.items():
        color, marker = STYLE.get(key, ("tab:green", "o"))
        points = sorted(p for p in points if p[0] > 0)
        right.plot([p[0] for p in points], [p[1] for p in points], color=color, marker=marker,
                   markersize=4, label=label)
    right.set_xlabel("epoch")
    right.set_ylabel("target test accuracy (%)")
    right.set_title("Learning curves (test accuracy after each epoch)")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    lows = [p[1] for pts in by_method.values() for p in pts if p[0] > 0]
    if lows:
        right.set_ylim(max(0, min(lows) - 3), min(100, max(lows) + 2))
    right.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))

    fig.tight_layout()
    fig.savefig(output, dpi=110)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
