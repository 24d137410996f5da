#!/usr/bin/env bash
# The GPU check, for a lent GPU machine (its python3 already has torch, transformers, safetensors, typer):
# the CUDA tests, then CPU vs GPU merges of the 2 GB benchmark pair, then (where vLLM is installed) expo tune's
# vLLM backend: its exactness tests on CUDA and both backends on a ~1B model built from a config (random weights:
# throughput only). About 8 minutes on an H100. Any mismatch fails it (exit non-zero); each stage has its own time
# limit; gpu_check.json holds the merge check's measurements.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD/benchmarks:$PWD/tests" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_merge.py -x
timeout 300 python3 benchmarks/gpu_check.py "$@"
if python3 -c "import vllm" 2>/dev/null; then
    timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_vllm.py -x
    timeout 300 python3 benchmarks/bench_tune.py --backends transformers,vllm --device cuda --dtype bfloat16 \
        --hidden 2048 --layers 16 --prompts 128 --max-new-tokens 256
else
    echo "vLLM is not installed on this machine: the vLLM backend's GPU checks did not run"
fi
