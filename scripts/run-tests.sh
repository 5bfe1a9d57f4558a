#!/usr/bin/env bash
# Set up (if needed) and run the linter and the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check src tests examples benchmarks
python -m pytest -q --durations=15 "$@"
