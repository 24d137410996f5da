"""Generation for expo tune: what the model is given, where a response ends, and how each batch is seeded."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, set_seed

from expo_cli.tuning.backends.generation import Decoding, encode_prompts, generate
from helpers import steered_pair, word_tokenizer

BOS, EOS, PAD, USER, ASSISTANT = 1, 2, 3, 4, 5  # word_tokenizer's ids; its template marks turns with w4 and w5


@pytest.fixture(scope="module")
def aligned_model(tmp_path_factory):
    _, aligned = steered_pair(tmp_path_factory.mktemp("steered"))
    return AutoModelForCausalLM.from_pretrained(aligned).eval()


class Scripted(torch.nn.Module):
    """A stand-in causal LM that answers every prompt with the same tokens: what `generate` makes of them."""

    def __init__(self, answer: list[int], eos: int | list[int]) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = GenerationConfig(eos_token_id=eos)
        self.answer = answer

    def generate(self, input_ids, attention_mask, generation_config):
        copies = generation_config.num_return_sequences
        tail = torch.tensor(self.answer).repeat(input_ids.shape[0] * copies, 1)
        return torch.cat([input_ids.repeat_interleave(copies, 0), tail], 1)


def test_a_prompt_is_encoded_with_the_chat_template_and_its_generation_prompt():
    tokenizer = word_tokenizer()
    assert encode_prompts(tokenizer, ["w9 w10"], chat_template=True) == [[BOS, USER, 9, 10, ASSISTANT]]
    assert encode_prompts(tokenizer, ["w9 w10"], chat_template=False) == [[9, 10]]


def test_the_model_is_given_the_encoded_prompts_left_padded(aligned_model):
    tokenizer = word_tokenizer()
    seen = []
    original = aligned_model.generate

    def recording(**kwargs):
        seen.append((kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist()))
        return original(**kwargs)

    aligned_model.generate = recording
    try:
        ids = encode_prompts(tokenizer, ["w9 w10", "w11"], chat_template=True)
        generate(aligned_model, tokenizer, ids, Decoding(max_new_tokens=2, temperature=0, batch_size=2))
    finally:
        del aligned_model.generate
    assert seen == [  # the shorter prompt first (batches by length), padded on the left
        ([[PAD, BOS, USER, 11, ASSISTANT], [BOS, USER, 9, 10, ASSISTANT]], [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    ]


@pytest.mark.parametrize(
    ("answer", "eos", "expected"),
    [
        ([9, 10, EOS, 11, EOS, 12], EOS, ("w9 w10", 2, "stop")),
        ([9, 7, 10, EOS], [EOS, 7], ("w9", 1, "stop")),  # a generation config may list several end tokens
        ([9, 10, 11], EOS, ("w9 w10 w11", 3, "length")),  # cut by max_new_tokens: every token counts
        ([EOS, 9], EOS, ("", 0, "stop")),
    ],
)
def test_a_response_ends_at_its_first_end_token_and_counts_the_tokens_before_it(answer, eos, expected):
    tokenizer = word_tokenizer()
    ids = encode_prompts(tokenizer, ["w20", "w21 w22"], chat_template=True)
    decoding = Decoding(max_new_tokens=len(answer), temperature=0.7, samples_per_prompt=2)
    responses = generate(Scripted(answer, eos), tokenizer, ids, decoding)
    assert [(r.prompt, r.sample) for r in responses] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [(r.text, r.tokens, r.finish) for r in responses] == [expected] * 4


@pytest.mark.parametrize(("eos_bias", "finish"), [(-1e4, "length"), (1e4, "stop")])
def test_a_model_made_to_ramble_is_cut_and_one_made_to_stop_is_not(aligned_model, eos_bias, finish):
    """The end token's logit pushed down (the model never stops) or up (it stops at once): every response is cut
    at max_new_tokens, or none is; the truncation rate a tune reports follows."""
    from expo_cli.tuning.decision.candidate import Candidate

    tokenizer = word_tokenizer()
    ids = encode_prompts(tokenizer, [f"w{20 + i}" for i in range(6)], chat_template=True)
    model = copy.deepcopy(aligned_model)
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
    with torch.no_grad():
        model.lm_head.bias[EOS] = eos_bias
    responses = generate(model, tokenizer, ids, Decoding(max_new_tokens=7, temperature=1.0, batch_size=4))
    assert {r.finish for r in responses} == {finish}
    assert {r.tokens for r in responses} == ({7} if finish == "length" else {0})
    candidate = Candidate(0.0, "selection", responses, [0.0] * len(responses), 0, 0, 0, len(responses), 0)
    assert candidate.truncated == (1.0 if finish == "length" else 0.0)


def test_batch_n_is_sampled_with_seed_plus_n(aligned_model):
    """The documented rule, recomputed with transformers directly: the same prompts in two batches get other
    random numbers, and each batch exactly those of `seed + its number`."""
    tokenizer = word_tokenizer()
    ids = encode_prompts(tokenizer, ["w9 w10"] * 8, chat_template=True)
    decoding = Decoding(max_new_tokens=8, temperature=1.0, batch_size=4, seed=5)
    texts = [r.text for r in generate(aligned_model, tokenizer, ids, decoding)]
    assert texts[:4] != texts[4:]
    config = GenerationConfig(
        max_new_tokens=8, do_sample=True, temperature=1.0, top_p=0.9, top_k=50, eos_token_id=[EOS], pad_token_id=PAD
    )
    for number in range(2):
        set_seed(decoding.seed + number)
        batch = torch.tensor([ids[0]] * 4)
        with torch.no_grad():
            out = aligned_model.generate(
                input_ids=batch, attention_mask=torch.ones_like(batch), generation_config=config
            )
        expected = []
        for row in out[:, batch.shape[1] :].tolist():
            kept = row[: row.index(EOS)] if EOS in row else row
            expected.append(tokenizer.decode(kept, skip_special_tokens=True))
        assert texts[4 * number : 4 * number + 4] == expected
