#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Creates the PyTorch + PEFT 0.21.2 "peer" venv that bench/peft_cpu.py and bench/vs_peft.py use.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Outside the repository by default: the environment is several GB and must never be committed.
venv=${1:-"$repo_root/../peer-venv"}

# PEFT is pinned because the cross-check fixtures encode its exact dtype behaviour; the others
# follow whatever PyPI offers (on Linux x86-64 that is the torch wheel with CUDA dependencies).
packages=(torch "peft==0.21.2" transformers safetensors numpy)

if [[ -x "$venv/bin/python" ]] &&
  "$venv/bin/python" - <<'PY' >/dev/null 2>&1; then
import importlib.metadata as md
import torch, peft, transformers, safetensors, numpy  # noqa: F401
assert md.version("peft") == "0.21.2"
PY
  echo "peer venv at $venv is already complete"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --upgrade pip
"$venv/bin/python" -m pip install "${packages[@]}"
"$venv/bin/python" -c \
  'import torch, peft; print("torch", torch.__version__, "peft", peft.__version__)'
