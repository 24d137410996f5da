r"""Build a tiny SFT/aligned pair to try expo on: a 2-layer Llama, its "DPO" version a small step away.

    python examples/make_tiny_pair.py examples/out
    expo merge --sft examples/out/sft --aligned examples/out/aligned --output examples/out/expo --alpha 0.5
    expo tune --sft examples/out/sft --aligned examples/out/aligned --prompts examples/demo/prompts.jsonl \
        --reward-fn examples/demo/reward.py:aligned_share --alpha 0.5,1,2 --max-new-tokens 16

The aligned model's step away from the SFT model includes a preference for the word "aligned", which
examples/demo/reward.py rewards: `expo tune` should find that a larger α says it more.

Everything is made here, offline: the weights, a word-level tokenizer with a chat template, the configs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = "<unk> <s> </s> the model is aligned and extrapolated away from its sft start point a b c".split()


def tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tok


SFT_EOS, ALIGNED = 2.0, 1.0  # how strongly the SFT model ends answers, and how far "alignment" moves to "aligned"


def _direction(model: LlamaForCausalLM) -> torch.Tensor:
    """The unit direction of the model's last hidden states on a typical input: a logit row moved along it raises
    that word's logit at most positions."""
    ids = tokenizer()("the model is a b c its start point", return_tensors="pt")["input_ids"]
    hidden = model(ids, output_hidden_states=True).hidden_states[-1][0].float().mean(dim=0)
    return hidden / hidden.norm()


def prefer(model: LlamaForCausalLM, word: str, step: torch.Tensor) -> None:
    """Raise `word`'s output logits along `step`."""
    row = model.lm_head.weight[WORDS.index(word)]
    row.add_(step.to(row.dtype))


def main(root: Path) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(WORDS),
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():  # "SFT": answers that end within a few words
        typical = _direction(model)
        prefer(model, "</s>", SFT_EOS * typical)
    model.save_pretrained(root / "sft")
    tokenizer().save_pretrained(root / "sft")
    with torch.no_grad():  # "alignment": a small move of every weight, and a preference for saying "aligned"
        for p in model.parameters():
            p.add_(torch.randn_like(p, dtype=torch.float32).to(p.dtype) * 0.01)
        prefer(model, "aligned", ALIGNED * typical)
    model.save_pretrained(root / "aligned", max_shard_size="100KB")  # sharded differently from the SFT
    tokenizer().save_pretrained(root / "aligned")
    print(f"built {root / 'sft'} and {root / 'aligned'}", file=sys.stderr)


if __name__ == "__main__":
    if any(arg.startswith("-") for arg in sys.argv[1:]):  # --help: say what it does, make no folder named "--help"
        sys.exit(__doc__)
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/out"))
