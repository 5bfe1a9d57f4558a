#!/usr/bin/env bash
# Run PEFT's generic tuner suite (tests/test_custom_models.py of the installed peft version's sdist) with
# SVF rows, printing pytest's own output; extra arguments go to pytest (e.g. -x, -k "merge and SVF").
# CI runs the same through tests/test_peft_suite.py, which also checks the result.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python tests/test_peft_suite.py "$@"
