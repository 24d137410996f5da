"""Sampling responses from a causal LM the same way for every candidate, so that differences between α are paired.

Prompts are rendered with the model's chat template and a generation prompt (as the paper did), grouped by length
into fixed left-padded batches, and each batch is seeded with `seed + batch number` before `generate`: every
candidate sees the same prompts, in the same batches, with the same random numbers, and a batch made again (a
resumed run) is the batch made before. Every decoding setting is
passed explicitly (the model's own generation_config may carry others); the response is cut at the first
end-of-sequence token, its length is counted in tokens, and one that never reached it is marked cut ("length").
The defaults are the paper's (max_new_tokens 2048, temperature 0.7, top-p 0.9, top-k 50).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ...errors import InputError, UsageError


@dataclass(frozen=True)
class Decoding:
    """How responses are sampled; temperature 0 is greedy decoding."""

    max_new_tokens: int = 2048  # the paper's: a lower limit cuts long answers, more of them at larger α
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    samples_per_prompt: int = 1
    batch_size: int = 8
    seed: int = 42

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens {self.max_new_tokens}: must be at least 1")
        if self.temperature < 0:
            raise UsageError(f"--temperature {self.temperature:g}: must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p {self.top_p:g}: must be in (0, 1]")
        if self.samples_per_prompt < 1 or self.batch_size < 1:
            raise UsageError("--samples-per-prompt and --batch-size must be at least 1")
        if self.temperature == 0 and self.samples_per_prompt > 1:
            raise UsageError(
                "--samples-per-prompt > 1 needs sampling: greedy decoding (--temperature 0) gives "
                "the same response every time"
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Response:
    prompt: int  # index into the prompts
    sample: int
    text: str
    tokens: int
    finish: str = "stop"  # "stop": it ended with an end token; "length": cut at --max-new-tokens

    @property
    def truncated(self) -> bool:
        return self.finish == "length"


def encode_prompts(tokenizer: Any, prompts: Sequence[str], chat_template: bool) -> list[list[int]]:
    """Token ids of each prompt: the chat template with a generation prompt, or the plain text."""
    if not chat_template:
        return [tokenizer(p)["input_ids"] for p in prompts]
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            "the aligned model's tokenizer has no chat template; pass --no-chat-template to "
            "generate from the raw prompt text"
        )
    return [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
        for p in prompts
    ]


def stop_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """End-of-sequence ids: the model's generation config (which may list several), else the tokenizer's."""
    configured = getattr(generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in ids if isinstance(i, int)] or [tokenizer.eos_token_id]
    if ids == [None]:
        raise InputError("the aligned model defines no end-of-sequence token (eos_token_id)")
    return ids


def batches(prompt_ids: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Prompt indices in fixed batches of similar length (less padding): the same batches for every candidate."""
    order = sorted(range(len(prompt_ids)), key=lambda i: (len(prompt_ids[i]), i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class Generator:
    """Generates one batch at a time (so that a run can keep each batch as it is made), seeded by its number."""

    def __init__(self, model: Any, tokenizer: Any, decoding: Decoding) -> None:
        from transformers import GenerationConfig  # transformers loads when a model does

        self.model, self.tokenizer, self.decoding = model, tokenizer, decoding
        self.eos = stop_ids(getattr(model, "generation_config", None), tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos[0]
        sampling = decoding.temperature > 0
        self.config = GenerationConfig(
            max_new_tokens=decoding.max_new_tokens,
            do_sample=sampling,
            num_return_sequences=decoding.samples_per_prompt,
            temperature=decoding.temperature if sampling else None,
            top_p=decoding.top_p if sampling else None,
            top_k=decoding.top_k if sampling else None,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
        )

    def batch(self, number: int, members: Sequence[int], prompt_ids: Sequence[Sequence[int]]) -> list[Response]:
        """The responses to the prompts `members` (indices into `prompt_ids`), sampled with seed + `number`."""
        import torch  # torch loads on first use, not with the package
        from transformers import set_seed  # transformers loads when a model does

        device = next(self.model.parameters()).device
        batch = [prompt_ids[i] for i in members]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[self.pad] * (width - len(ids)) + list(ids) for ids in batch], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        set_seed(self.decoding.seed + number)
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=self.config)
        responses = []
        for row, tokens in enumerate(out[:, width:].tolist()):
            prompt, sample = divmod(row, self.decoding.samples_per_prompt)
            responses.append(response(members[prompt], sample, tokens, self.eos, self.tokenizer))
        return sorted(responses, key=lambda r: (r.prompt, r.sample))


def response(prompt: int, sample: int, tokens: Sequence[int], eos: Sequence[int], tokenizer: Any) -> Response:
    """A generated sequence as a response: cut at its first end token (else marked cut at the limit), decoded."""
    cut = next((i for i, token in enumerate(tokens) if token in eos), None)
    kept = list(tokens[:cut])
    text = tokenizer.decode(kept, skip_special_tokens=True)
    return Response(prompt, sample, text, len(kept), "length" if cut is None else "stop")


def generate(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    decoding: Decoding,
    advance: Callable[[int], None] = lambda n: None,
) -> list[Response]:
    """Every prompt's responses (prompt-major), generated in fixed seeded batches; `advance(n)` after each batch."""
    generator = Generator(model, tokenizer, decoding)
    responses = []
    for number, members in enumerate(batches(prompt_ids, decoding.batch_size)):
        responses += generator.batch(number, members, prompt_ids)
        advance(len(members))
    return sorted(responses, key=lambda r: (r.prompt, r.sample))
