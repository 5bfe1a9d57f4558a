#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded SmolLM2-135M-Instruct.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python examples/quickstart.py "$@"
