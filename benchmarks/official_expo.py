"""The official ExPO approach (LLM-Extrapolation's extrapolate.py), as a baseline for the benchmark.

    python benchmarks/official_expo.py SFT ALIGNED OUTPUT ALPHA

Both models loaded whole with transformers in bfloat16, every parameter updated in place in bfloat16
(aligned + α·(aligned − sft)), then save_pretrained. Memory: two full models.
"""

from __future__ import annotations

import sys

import torch
from transformers import AutoModelForCausalLM


def main(sft: str, aligned: str, output: str, alpha: float) -> None:
    base = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(aligned, dtype=torch.bfloat16)
    base_params = dict(base.named_parameters())
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.data = param.data + alpha * (param.data - base_params[name].data)
    model.save_pretrained(output)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
