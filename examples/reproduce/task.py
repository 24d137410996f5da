"""The toy task: reverse a string of digits. Its gold reward is also `expo tune`'s reward function.

expo tune ... --reward-fn examples/reproduce/task.py:gold_reward
"""

from __future__ import annotations

import random

DIGITS = "0123456789"
PROMPT_END = ">"
EOS = "$"
PAD = "_"


def target(prompt: str) -> str:
    """The ideal response: the prompt's digits reversed."""
    return prompt.rstrip(PROMPT_END)[::-1]


def gold_reward(prompt: str, response: str) -> float:
    """Positions right, over the longer of response and target: wrong, missing and extra characters all cost,
    so a longer answer cannot score more by being longer."""
    want, got = target(prompt), response.strip()
    if not want and not got:
        return 0.0
    return sum(a == b for a, b in zip(want, got, strict=False)) / max(len(want), len(got))


def noisy(rng: random.Random, text: str, flip: float = 0.35, edge: float = 0.1) -> str:
    """A demonstration as a noisy annotator writes it: each digit wrong with probability `flip`, and with
    probability `edge` the last digit dropped or doubled."""
    out = [rng.choice(DIGITS) if rng.random() < flip else c for c in text]
    if rng.random() < edge and out:
        out = out[:-1] if rng.random() < 0.5 else [*out, out[-1]]
    return "".join(out)


def build_tokenizer():  # a transformers PreTrainedTokenizerFast
    """One token per character (digits, `>`, the end `$`, padding `_`), with a chat template that renders a prompt
    as its digits followed by `>`, as training saw it."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([PAD, EOS, PROMPT_END, *DIGITS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=PAD, unk_token=PAD)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}" + PROMPT_END + "{% endif %}"
    )
    return tokenizer
