#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a machine whose python3 already holds torch, timm,
# accelerate, numba and the rest but not webdataset, braceexpand or isal: those are installed from
# the carried wheels (make gpu-wheels) when missing, the project runs from this working tree.
#   benchmarks/gpu_check.sh [--out DIR] [any gpu_check.py option, e.g. --steps 2,5 or --cpu-smoke]
# PYTHON picks the interpreter (default python3); GPU_WHEELS the wheels folder (default gpu_carry/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-gpu_carry/wheels}

missing=()
for pkg in webdataset braceexpand isal; do  # each imports under its own name
  "$PY" -c "import $pkg" 2>/dev/null || missing+=("$pkg")
done
extra_path=""
if ((${#missing[@]})); then
  if [ ! -d "$WHEELS" ]; then
    echo "error: $PY lacks ${missing[*]} and $WHEELS does not exist; run \`make gpu-wheels\` and carry gpu_carry" >&2
    exit 2
  fi
  echo "installing ${missing[*]} from $WHEELS"
  # into the interpreter's own environment; where that is not writable, into a folder on PYTHONPATH
  if ! "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" "${missing[@]}"; then
    extra_path=/tmp/gpu_check_site
    "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" --target "$extra_path" "${missing[@]}"
  fi
fi
export PYTHONPATH="$PWD${extra_path:+:$extra_path}${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py "$@"
