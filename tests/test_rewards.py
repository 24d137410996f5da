"""Reward scoring for expo tune: the reward model sees each conversation exactly once, as its tokenizer would."""

from __future__ import annotations

import json

import pytest
import torch

from expo_cli.tuning.objectives.rewards import RewardModel
from helpers import eos_terminated_reward_model, save_reward_model, word_tokenizer

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


EOS, PAD = 2, 3


def unpadded(rm: RewardModel, prompt: str, response: str) -> float:
    """The logit at the conversation's real last token, computed alone with nothing to pool around."""
    ids = rm.tokenizer(rm.render(prompt, response), add_special_tokens=False)["input_ids"]
    config = rm.model.config
    saved, config.pad_token_id = config.pad_token_id, None  # one sequence, no pad id: transformers takes the last
    try:
        with torch.no_grad():
            return rm.model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    finally:
        config.pad_token_id = saved


def test_a_template_ending_in_eos_is_scored_at_its_last_token_as_unpadded(tmp_path):
    rm = RewardModel(str(eos_terminated_reward_model(tmp_path / "rm")), batch_size=3)
    assert rm.tokenizer.pad_token_id is None
    prompts, responses = ["w9 w10", "w11", "w12 w13 w14", "w15"], ["w20 w21", "w22 w23 w24", "w25", "w26 w27 w28 w29"]
    scores = rm.score(prompts, responses)
    for prompt, response, score in zip(prompts, responses, scores, strict=True):
        ids = rm.tokenizer(rm.render(prompt, response), add_special_tokens=False)["input_ids"]
        assert ids[-1] == EOS  # the conversation ends in EOS ...
        assert score == pytest.approx(unpadded(rm, prompt, response), abs=1e-5)
        # ... and pooling with EOS as the pad id would have scored the token before it: a different number.
        rm.model.config.pad_token_id = EOS
        with torch.no_grad():
            early = rm.model(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert abs(early - score) > 1e-4


def test_a_conversation_longer_than_the_context_loses_the_start_of_its_prompt(tmp_path):
    rm = RewardModel(str(eos_terminated_reward_model(tmp_path / "rm", max_position_embeddings=16)), batch_size=2)
    assert rm.max_length == 16
    long_prompt = " ".join(f"w{10 + i}" for i in range(20))
    response = "w60 w61 w62"
    short = ("w9", "w63")
    scores = rm.score([long_prompt, short[0]], [response, short[1]])
    assert rm.cuts == {(long_prompt, response): "prompt"}
    kept = " ".join(f"w{10 + i}" for i in range(20)[-(16 - 8) :])  # <s> w4 … </s> w5 w60 w61 w62 </s>: 8 around it
    ids, cut = rm.encode(long_prompt, response)
    assert (
        cut == "prompt"
        and len(ids) == 16
        and ids == rm.tokenizer(rm.render(kept, response), add_special_tokens=False)["input_ids"]
    )
    assert scores[0] == pytest.approx(unpadded(rm, kept, response), abs=1e-5)
    assert scores[1] == pytest.approx(unpadded(rm, *short), abs=1e-5)


def test_a_response_too_long_for_the_context_alone_loses_its_end_but_keeps_the_template_end(tmp_path):
    """Never a fragment with the end-of-turn token cut off: the prompt goes first, then the response's end, and
    the conversation still ends as the template ends it."""
    rm = RewardModel(str(eos_terminated_reward_model(tmp_path / "rm", max_position_embeddings=16)), batch_size=2)
    overhead = rm.overhead()
    response = " ".join(f"w{30 + i}" for i in range(20))
    ids, cut = rm.encode("w9 w10", response)
    kept = " ".join(f"w{30 + i}" for i in range(16 - overhead))
    assert cut == "response" and len(ids) == 16 and ids[-1] == EOS
    assert ids == rm.tokenizer(rm.render("", kept), add_special_tokens=False)["input_ids"]
    [score] = rm.score(["w9 w10"], [response])
    assert rm.cuts == {("w9 w10", response): "response"}
    assert score == pytest.approx(unpadded(rm, "", kept), abs=1e-5)


def test_identical_pairs_are_scored_once():
    from expo_cli.tuning.objectives.rewards import Cached

    calls = []

    class Counting:
        name = "counting"
        cuts: dict = {}

        def identity(self):
            return {"reward_fn": self.name}

        def score(self, prompts, responses):
            calls.append(list(zip(prompts, responses, strict=True)))
            return [float(len(r)) for r in responses]

    cached = Cached(Counting())
    assert cached.score(["p", "p", "q"], ["a", "a", "bb"]) == [1.0, 1.0, 2.0]
    assert cached.score(["q", "p", "r"], ["bb", "a", "ccc"]) == [2.0, 1.0, 3.0]
    assert calls == [[("p", "a"), ("q", "bb")], [("r", "ccc")]]


def test_a_reward_functions_identity_follows_the_modules_it_imports_from_its_folder(tmp_path):
    """An edited helper the grader imports scores anew; an unrelated file, or a library, does not count."""
    from expo_cli.tuning.objectives.rewards import RewardFunction

    (tmp_path / "graders").mkdir()
    (tmp_path / "graders" / "__init__.py").write_text("")
    (tmp_path / "graders" / "util.py").write_text("WEIGHT = 1.0\n")
    (tmp_path / "helper.py").write_text("from graders.util import WEIGHT\n")
    (tmp_path / "grade.py").write_text(
        "import json\nfrom helper import WEIGHT\n\ndef score(p, r):\n    return WEIGHT\n"
    )
    (tmp_path / "unrelated.py").write_text("X = 1\n")
    spec = f"{tmp_path / 'grade.py'}:score"
    first = RewardFunction(spec).identity()
    assert first["modules"] == ["grade.py", "graders/__init__.py", "graders/util.py", "helper.py"]
    assert first["scoring_code"] and str(tmp_path) not in json.dumps(first)
    (tmp_path / "unrelated.py").write_text("X = 2\n")
    assert RewardFunction(spec).identity() == first
    (tmp_path / "graders" / "util.py").write_text("WEIGHT = 2.0\n")
    assert RewardFunction(spec).identity()["source_sha256"] != first["source_sha256"]


def test_a_module_name_for_a_file_beside_says_how_to_name_the_file(tmp_path, monkeypatch):
    from expo_cli.errors import InputError
    from expo_cli.tuning.objectives.usercode import load_function

    monkeypatch.chdir(tmp_path)  # a name no other test imports: sys.modules holds what they did
    (tmp_path / "hinted_grader.py").write_text("def score(p, r):\n    return 1.0\n")
    with pytest.raises(InputError) as caught:
        load_function("hinted_grader:score")
    assert str(caught.value) == (
        "--reward-fn hinted_grader:score: cannot import hinted_grader (ModuleNotFoundError: No module named "
        "'hinted_grader'); to load the file hinted_grader.py, write hinted_grader.py:score"
    )
    assert load_function("hinted_grader.py:score")("p", "r") == 1.0
    with pytest.raises(InputError, match=r"No module named 'nothere'\)$"):
        load_function("nothere:score")  # no such file either: no hint


def test_a_reward_model_beside_a_vllm_engine_goes_where_it_fits():
    """The engine takes --gpu-memory-utilization of the GPU (vLLM's 0.9 by default); the reward model scores on
    the GPU only when its weights, activations and a GiB fit in the rest, else on the CPU, and says which."""
    from expo_cli.tuning.backends.serving import reward_placement

    gb = 10**9
    assert reward_placement(2 * gb, 80 * gb, None) == (
        "cuda",
        "on the GPU beside the engine (3.7 GB of the 8.0 GB it leaves)",
    )
    device, why = reward_placement(6 * gb, 80 * gb, None)  # 6 GB × 1.3 + 1 GiB > 8 GB
    assert device == "cpu" and why.endswith("(lower --gpu-memory-utilization, or pass --reward-device)")
    assert reward_placement(6 * gb, 80 * gb, 0.5)[0] == "cuda"
    assert reward_placement(0, 80 * gb, 1.0)[0] == "cpu"  # nothing left: even a tiny model waits on the CPU


def test_a_planned_device_is_part_of_the_reward_models_identity(tmp_path):
    rm = RewardModel(str(save_reward_model(tmp_path / "rm", word_tokenizer())), "cpu")
    assert rm.identity()["device"] == "cpu"
    rm.plan("cuda")  # scores keyed by where they will be made, before the move
    assert rm.identity()["device"] == "cuda" and rm.model.device.type == "cpu"
    assert rm.nbytes() == sum(p.numel() * p.element_size() for p in rm.model.parameters()) > 0


def byte_level_reward_model(folder, context: int) -> RewardModel:
    """A reward model whose byte-level BPE splits multi-byte characters: a prompt cut at a token boundary can
    start mid-character, and its text then re-tokenises into more tokens than were kept."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "<unk>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=96, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["日本語のテキスト", "héllo wörld", "plain ascii words"] * 50, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.model_max_length = context
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
    return RewardModel(str(save_reward_model(folder, tokenizer)), "cpu")


def test_a_cut_prompt_that_re_tokenises_longer_is_cut_again_until_it_fits(tmp_path):
    rm = byte_level_reward_model(tmp_path / "rm", context=40)
    grew = 0
    for i in range(30):
        prompt = "日本語" * (5 + i % 7) + "é" * (i % 3)
        ids, cut = rm.encode(prompt, "ok")
        assert len(ids) <= 40 and cut == "prompt", (prompt, len(ids), cut)  # the short answer is kept whole
        kept = rm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        again = rm.tokenizer(rm.tokenizer.decode(kept[1:]), add_special_tokens=False)["input_ids"]
        grew += len(again) > len(kept) - 1
    assert grew  # the case this test exists for did occur
