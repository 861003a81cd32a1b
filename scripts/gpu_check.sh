#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py): on a lent GPU machine, from the repository root,
#     bash scripts/gpu_check.sh                 -> $OUT/gpu_check.json and $OUT/gpu_check.log
# and here, without a GPU, every step on the tiny model:
#     bash scripts/gpu_check.sh --cpu-dry-run   -> engines/gpu_check/gpu_check.json (OUT unset)
# Needs only what the device image has (python3 with torch, transformers, onnx, numpy; nvcc; g++
# for the dry run): nothing is installed and nothing is downloaded. Runs in under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/engines/gpu_check}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
"$PY" scripts/gpu_check.py --out "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
