#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs the Debian packages needed to build and test vera; silent when they are all present.
set -euo pipefail

# Extra package names on the command line are installed too (CI adds the fuzzing toolchain).
packages=("$@" cmake ninja-build g++ libeigen3-dev catch2 libbenchmark-dev ccache nlohmann-json3-dev
  zlib1g-dev dataset-fashion-mnist libopenmpi-dev openmpi-bin)
# The optional xtensor front-end (xtl comes with libxtensor-dev; xtensor-dev is its transitional name).
packages+=(libxtensor-dev libxsimd-dev)
# OpenBLAS for the release-blas preset (without it, CMake finds the slow reference BLAS) and for
# LibTorch's GEMMs in bench/libtorch.
packages+=(libopenblas-dev)
# oneDNN for the vera::onednn GEMM provider (float32, and bfloat16 on AMX / AVX-512 BF16).
packages+=(libdnnl-dev)

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

sudo=()
if ((EUID != 0)); then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
