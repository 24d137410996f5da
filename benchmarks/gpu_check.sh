#!/usr/bin/env bash
# The GPU check, for a lent GPU machine (its python3 already has torch, transformers, safetensors, typer):
# the CUDA tests, then CPU vs GPU merges of the 2 GB benchmark pair. Under 5 minutes on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD/benchmarks:$PWD/tests" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_merge.py -x
python3 benchmarks/gpu_check.py "$@"
