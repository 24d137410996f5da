"""Load a merged checkpoint with transformers and generate a few tokens: proof that it is a usable model."""

from __future__ import annotations

import sys
from pathlib import Path

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
    pair = Path(path).parent
    print(f'\nThe merged checkpoint is in {path}. Next (the README\'s "Try it on the demo pair"):')
    print("  source .venv/bin/activate        # puts expo on the PATH (or run .venv/bin/expo)")
    print(f"  expo verify {path} --sft {pair}/sft --aligned {pair}/aligned")
    print(
        f"  expo tune --sft {pair}/sft --aligned {pair}/aligned --prompts examples/demo/prompts.jsonl "
        "--reward-fn examples/demo/reward.py:aligned_share --alpha 0.5,1,2 --max-new-tokens 16 "
        f"--report {pair}/report.html"
    )


if __name__ == "__main__":
    main(sys.argv[1])
