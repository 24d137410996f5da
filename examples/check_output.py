"""Load a merged checkpoint with transformers and generate a few tokens: proof that it is a usable model."""

from __future__ import annotations

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(path: str) -> None:
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    missing, unexpected = info["missing_keys"], info["unexpected_keys"]
    if missing or unexpected:
        sys.exit(f"missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer("the model is", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    print(f"loaded {path}: {model.num_parameters()} parameters, {model.dtype}, no missing or unexpected keys")
    print(f"generated: {tokenizer.decode(generated[0])!r}")


if __name__ == "__main__":
    main(sys.argv[1])
