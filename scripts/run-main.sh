#!/usr/bin/env bash
# Set up (if needed) and run the main job: the whole Transformer² loop on the embedded SmolLM2-135M-Instruct.
# Arguments go to the job: --quick for the smoke run, --output-dir DIR, --seed N (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m peft_svf.pipeline "$@"
