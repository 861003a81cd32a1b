#!/usr/bin/env bash
# Sets up a virtual environment with everything the tests need (CPU torch, ONNX Runtime,
# TensorRT-RTX for ahead-of-time engine builds, the TensorRT headers for the plugin), compiles
# the TensorRT plugin for sm_80/86/87/89/90 (warnings are errors) and runs the whole suite.
# Used by the README and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[export,cpu,rtx,dev]"
python -m plugins build
# TensorRT-RTX's ONNX parser dlopens the unversioned libtensorrt_rtx.so when it meets a plugin
# node; the wheel ships only the versioned name, so provide it before Python starts.
export LD_LIBRARY_PATH="$(python -m plugins rtx-env)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python -m pytest -q "$@"
