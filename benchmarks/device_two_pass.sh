#!/usr/bin/env bash
# One-shot GPU run of the two-pass benchmark (random-weight SmolLM2 shape, bf16) plus the SVF forward/backward
# benchmark at Llama-3-8B shapes. Run through the device tool from the repo root, carrying `.whl` (peft,
# transformers, trl, datasets, dill, multiprocess wheels) and `.devcarry/smol` (SmolLM2's config and tokenizer).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PEFT_SVF_CACHE=/tmp/peft_svf_cache
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 300 python3 benchmarks/two_pass_overhead.py --random-weights .devcarry/smol --device cuda --dtype bfloat16 \
  --output "$OUT/two_pass_overhead_gpu.json" 2>&1 | grep -v "Warning\|warn" | tee "$OUT/two_pass.log"
timeout 150 python3 benchmarks/svf_forward_backward.py --model llama3-8b --layers 4 --device cuda --dtype bfloat16 \
  --batch 8 --seq 512 --repeats 10 --output "$OUT/forward_backward_llama3_8b_4layers_bf16.json" 2>&1 \
  | grep -v "Loading weights" | tee "$OUT/forward_backward.log"
