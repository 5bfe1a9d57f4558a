#!/usr/bin/env bash
# One-shot GPU check, run through the device tool from the repo root with `.whl` carried
# (bitsandbytes, peft and transformers wheels matching the CPU environment). Writes under $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PEFT_SVF_CACHE=/tmp/peft_svf_cache
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, peft, transformers, bitsandbytes as b; print(torch.__version__, peft.__version__, transformers.__version__, b.__version__)" | tee -a "$OUT/gpu.txt"
timeout 230 python3 benchmarks/svf_forward_backward.py --model llama3-8b --layers 4 --device cuda --dtype bfloat16 \
  --batch 8 --seq 512 --repeats 10 --output "$OUT/forward_backward_llama3_8b_4layers_bf16.json" 2>&1 \
  | grep -v "Loading weights" | tee "$OUT/forward_backward.log"
timeout 110 python3 benchmarks/quantized_base_check.py --device cuda --layers 2 --batch 4 --seq 512 --repeats 10 \
  --output "$OUT/quantized_nf4_llama3_8b_2layers.json" 2>&1 | grep -v "Loading weights" | tee "$OUT/quantized.log"
