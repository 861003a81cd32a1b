#!/usr/bin/env bash
# Sets up a virtual environment with everything the tests need (CPU torch, ONNX Runtime,
# TensorRT-RTX for ahead-of-time engine builds, the TensorRT headers for the plugin) and runs
# the whole test suite. Used by the README and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[cpu,rtx,dev]"
# TensorRT-RTX's ONNX parser dlopens the unversioned libtensorrt_rtx.so when it meets a plugin
# node; the wheel ships only the versioned name, so provide it before Python starts.
if python -c "import plugins.rtx_env" 2>/dev/null; then
  eval "$(python -m plugins.rtx_env)"
fi
python -m pytest -q "$@"
