#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# On a machine with a CUDA GPU, PyTorch and PEFT: the CUDA backend's device tests, bench_cuda and
# cuda_vs_peft.py (float32 and bfloat16), the joined table and the CUDA quickstart's run, each
# written to OUT_DIR:
#   system.txt  device_tests.txt  quickstart.txt  vera.txt  peft_float32.txt  peft_bfloat16.txt
#   table.md
#
# Usage: bash bench/cuda_report.sh [--smoke] [BUILD_DIR] [OUT_DIR]
#        (defaults: build/cuda, cuda-report)
# --smoke: the same steps in seconds (quickstart --quick, bench_cuda and cuda_vs_peft.py on their
# one small --smoke shape; PEFT on the CPU where torch sees no GPU): checks the whole chain before
# the full run. Its times mean nothing.
# BUILD_DIR must hold tests/vera_test_cuda_device, examples/cuda_quickstart and bench/bench_cuda;
# when it does not, they are built with the `cuda` preset first (which needs the library's build
# dependencies, Eigen included).
# Every step runs even when an earlier one fails; the exit status is that of the first failure.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
smoke=()
if [ "${1:-}" = "--smoke" ]; then
  smoke=(--smoke)
  shift
fi
build=${1:-build/cuda}
out=${2:-cuda-report}
mkdir -p "$out"
status=0
step() {  # step NAME OUTPUT_FILE COMMAND...: runs COMMAND, output to the file and to the terminal
  local name=$1 file=$2
  shift 2
  echo "== $name" >&2
  "$@" 2>&1 | tee "$file"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit status $rc" >&2
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}

system_info() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nvcc --version | tail -n 2
  python3 -c 'import torch, peft; print("torch", torch.__version__, "CUDA", torch.version.cuda, "peft", peft.__version__)'
  lscpu | grep -m1 'Model name'
  git log -1 --format='commit %H %s' 2>/dev/null || true
}
step "system" "$out/system.txt" system_info

programs=("$build/tests/vera_test_cuda_device" "$build/examples/cuda_quickstart" "$build/bench/bench_cuda")
for program in "${programs[@]}"; do
  if [ ! -x "$program" ]; then
    echo "== building the CUDA targets in $build" >&2
    cmake --preset cuda -B "$build" >/dev/null &&
      cmake --build "$build" --target vera_test_cuda_device cuda_quickstart bench_cuda || exit 1
    break
  fi
done

# Programs built on another machine may not find the CUDA libraries where this loader looks:
# then add the toolkit's folder and those of the CUDA wheels next to PyTorch.
if ldd "${programs[@]}" 2>/dev/null | grep -q "not found"; then
  wheels=$(python3 -c 'import glob, os, nvidia; print(":".join(sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "*", "lib", "*.so*"))})))' 2>/dev/null || true)
  export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${wheels}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "== library path: $LD_LIBRARY_PATH" >&2
fi

step "device tests" "$out/device_tests.txt" "$build/tests/vera_test_cuda_device"
peft_args=("${smoke[@]}")
if [ ${#smoke[@]} -gt 0 ]; then
  python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null ||
    peft_args+=(--device cpu)
fi
step "cuda_quickstart" "$out/quickstart.txt" "$build/examples/cuda_quickstart" ${smoke:+--quick}
step "bench_cuda" "$out/vera.txt" "$build/bench/bench_cuda" "${smoke[@]}"
for dtype in float32 bfloat16; do
  step "cuda_vs_peft $dtype" "$out/peft_$dtype.txt" python3 bench/cuda_vs_peft.py --dtype "$dtype" "${peft_args[@]}"
done
step "table" "$out/table.md" python3 bench/cuda_table.py "$out/vera.txt" "$out/peft_float32.txt" \
  "$out/peft_bfloat16.txt"
exit "$status"
