#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# The include direction of include/vera: every header includes only its own folder or folders below.
"""Checks that the headers under include/vera include one another in one direction.

    check_layers.py [INCLUDE_DIR]

The folders are ranked (docs/design.md, "Folders"):

    core < adapter < expr < backend < layer, xtensor, io, optim, distributed < umbrellas

A header may include headers of its own rank or lower. Two headers that include each other are a
failure too. Prints every violation and exits 1 when there is one; prints the counts otherwise.
"""

import os
import re
import sys

RANK = {
    "core": 0,
    "adapter": 1,
    "expr": 2,
    "backend": 3,
    "layer": 4,
    "xtensor": 4,
    "io": 4,
    "optim": 4,
    "distributed": 4,
}
UMBRELLA_RANK = 5
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](vera/[^>"]+)[>"]', re.MULTILINE)


def rank_of(header):
    parts = header.split("/")
    if len(parts) == 2:
        # vera/config.hpp holds the build switches every folder may read.
        return 0 if parts[1] == "config.hpp" else UMBRELLA_RANK
    folder = parts[1]
    if folder not in RANK:
        raise SystemExit(f"check_layers: {header}: folder '{folder}' has no rank; add it to RANK "
                         "and to docs/design.md")
    return RANK[folder]


def read_includes(root):
    includes = {}
    for folder, _, files in os.walk(os.path.join(root, "vera")):
        for name in files:
            if not name.endswith((".hpp", ".cuh")):
                continue
            path = os.path.join(folder, name)
            header = os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, encoding="utf-8") as f:
                includes[header] = set(INCLUDE.findall(f.read()))
    return includes


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "include")
    includes = read_includes(root)
    problems = []
    for header, targets in sorted(includes.items()):
        for target in sorted(targets):
            if target not in includes:
                problems.append(f"{header}: includes {target}, which does not exist")
            elif rank_of(target) > rank_of(header):
                problems.append(f"{header}: includes {target}, a folder above its own")
            elif header < target and header in includes[target]:
                problems.append(f"{header} and {target} include each other")
    for line in problems:
        print(line)
    if problems:
        print(f"check_layers: {len(problems)} violation(s) in {len(includes)} headers")
        return 1
    print(f"check_layers: {len(includes)} headers, includes point one way, no mutual includes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
