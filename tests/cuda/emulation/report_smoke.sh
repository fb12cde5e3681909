#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# bench/cuda_report.sh --smoke with the emulated programs standing in for the GPU ones: the
# report's steps, the programs' arguments and the table built from their real output are checked
# here, so the run on a GPU machine does not fail on the script.
#
# Usage: report_smoke.sh SOURCE_DIR DEVICE_CHECKS QUICKSTART BENCH
# Where python3 has torch and peft, the PEFT steps must pass and fill the table's PEFT column;
# elsewhere they are expected to fail and only vera's side is checked.
set -uo pipefail

source_dir=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/build/tests" "$work/build/examples" "$work/build/bench"
ln -s "$2" "$work/build/tests/vera_test_cuda_device"
ln -s "$3" "$work/build/examples/cuda_quickstart"
ln -s "$4" "$work/build/bench/bench_cuda"

bash "$source_dir/bench/cuda_report.sh" --smoke "$work/build" "$work/out" >"$work/log" 2>&1
rc=$?
failures=0
fail() {
  echo "report_smoke: $*"
  failures=$((failures + 1))
}
for step in "device tests" "cuda_quickstart" "bench_cuda" "table"; do
  grep -qx "== $step: exit status 0" "$work/log" || fail "step '$step' did not pass"
done
for file in system.txt device_tests.txt quickstart.txt vera.txt table.md; do
  [ -s "$work/out/$file" ] || fail "$file is missing or empty"
done
for dtype in float32 bfloat16; do
  for op in "forward" "forward + backward" "forward + backward (low-rank)" "merge"; do
    grep -q "^| smoke | $dtype | $op | [0-9]" "$work/out/table.md" || fail "table has no '$dtype $op' row"
  done
done
grep -q "^- smoke float32 forward + backward: against PEFT" "$work/out/table.md" || fail "table has no verdicts"

if python3 -c 'import torch, peft' 2>/dev/null; then
  [ "$rc" -eq 0 ] || fail "cuda_report.sh exited with $rc"
  for dtype in float32 bfloat16; do
    grep -q "^| smoke | $dtype | forward + backward | [0-9.]* | [0-9]" "$work/out/table.md" ||
      fail "no PEFT time in the $dtype forward + backward row"
  done
  echo "report_smoke: PEFT steps checked"
else
  echo "report_smoke: torch and peft not importable here; the PEFT steps were not checked"
fi

if [ "$failures" -ne 0 ]; then
  echo "---- cuda_report.sh output (exit status $rc) ----"
  cat "$work/log"
  exit 1
fi
echo "report_smoke: the report's steps and table passed"
