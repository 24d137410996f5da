"""Reward scoring for expo tune: the reward model sees each conversation exactly once, as its tokenizer would."""

from __future__ import annotations

import pytest
import torch

from expo_cli.tuning.rewards import RewardModel
from helpers import save_reward_model, word_tokenizer

BOS, USER, ASSISTANT = 1, 4, 5


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rm")
    torch.manual_seed(3)
    save_reward_model(folder, word_tokenizer(adds_bos=True))
    return folder


def test_the_fixture_tokenizer_adds_bos_as_llamas_does():
    assert word_tokenizer(adds_bos=True)("w9")["input_ids"] == [BOS, 9]


def test_a_templated_conversation_is_scored_with_one_bos(reward_model):
    rm = RewardModel(str(reward_model), batch_size=2)
    prompts, responses = ["w9 w10", "w11", "w12 w13 w14"], ["w20 w21", "w22 w23 w24", "w25"]
    scores = rm.score(prompts, responses)
    for prompt, response, score in zip(prompts, responses, scores, strict=True):
        # The template's text, tokenized by hand: <s> w4 prompt w5 response (the BOS the template writes, once).
        ids = [BOS, USER, *(int(w[1:]) for w in prompt.split()), ASSISTANT, *(int(w[1:]) for w in response.split())]
        with torch.no_grad():
            alone = rm.model(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert score == pytest.approx(alone, abs=1e-5)
