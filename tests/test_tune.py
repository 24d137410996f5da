"""expo tune: candidates bit for bit equal to expo merge, the same generations, the workflow, and its errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from expo_cli.merging.planning import prepare
from expo_cli.options import MergeOptions
from expo_cli.tuning.backends.candidates import CandidateModel
from expo_cli.tuning.backends.generation import Decoding, encode_prompts, generate
from expo_cli.tuning.decision import power
from expo_cli.tuning.objectives.rewards import RewardModel
from helpers import eos_terminated_reward_model, make_pair, read_all, save_reward_model, steered_pair, word_tokenizer

PROMPTS = [f"w{8 + i % 40} w{20 + i % 13} w{50 + i % 7}" for i in range(24)]
W7_SHARE = """def w7_share(prompt, response):
    words = response.split()
    return words.count('w7') / max(len(words), 1)
"""


@pytest.fixture(scope="module")
def steered(tmp_path_factory) -> tuple[Path, Path]:
    return steered_pair(tmp_path_factory.mktemp("steered"))


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


@pytest.fixture
def grader(tmp_path) -> Path:
    path = tmp_path / "grader.py"
    path.write_text(W7_SHARE)
    return path


def tune(expo, sft: Path, aligned: Path, prompts: Path, grader: Path, *extra: object):
    """`expo tune` on the steered pair, scored by the share of w7 in each response."""
    return expo(
        "tune", "--sft", sft, "--aligned", aligned, "--prompts", prompts, "--reward-fn", f"{grader}:w7_share", *extra
    )


def candidate_for(sft: Path, aligned: Path, **options) -> CandidateModel:
    run = prepare(sft, aligned, {}, MergeOptions(progress=False, **options))
    dtype = getattr(torch, run.main.pairing.dominant_dtype())
    return CandidateModel.attach(AutoModelForCausalLM.from_pretrained(aligned, dtype=dtype).eval(), run)


@pytest.mark.parametrize("arch", ["llama", "gpt2-tied"])
def test_candidate_parameters_are_bit_identical_to_the_merged_checkpoint(tmp_path, expo, arch):
    sft, aligned = make_pair(tmp_path, arch="llama" if arch == "llama" else "gpt2", dtype=torch.bfloat16)
    candidate = candidate_for(sft, aligned, alpha_for=["mlp=0.25"])
    for alpha in (0.5, 0.0, -1.0, 2.5, 0.3):  # in place, in any order: no state carries over
        candidate.set_alpha(alpha, MergeOptions())
        out = tmp_path / f"merged-{alpha:g}"
        assert (
            expo(
                "merge",
                "--sft",
                sft,
                "--aligned",
                aligned,
                "-o",
                out,
                "--alpha",
                alpha,
                "--alpha-for",
                "mlp=0.25",
                "-q",
            ).code
            == 0
        )
        merged = read_all(out)
        state = candidate.model.state_dict()
        assert merged, "the merge wrote tensors"
        for name, tensor in merged.items():
            assert torch.equal(state[name], tensor), f"α={alpha}: {name} differs from expo merge's output"
            assert state[name].dtype == tensor.dtype


def test_a_dtype_option_computes_candidates_as_the_merge_would_in_that_dtype(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    run = prepare(sft, aligned, {}, MergeOptions(progress=False, dtype="float32"))
    model = AutoModelForCausalLM.from_pretrained(aligned, dtype=torch.float32).eval()
    candidate = CandidateModel.attach(model, run)
    candidate.set_alpha(0.7, MergeOptions())
    assert (
        expo(
            "merge",
            "--sft",
            sft,
            "--aligned",
            aligned,
            "-o",
            tmp_path / "m",
            "--alpha",
            "0.7",
            "--dtype",
            "float32",
            "-q",
        ).code
        == 0
    )
    for name, tensor in read_all(tmp_path / "m").items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_a_model_loaded_in_another_dtype_is_refused(llama_pair):
    sft, aligned = llama_pair
    run = prepare(sft, aligned, {}, MergeOptions(progress=False))
    model = AutoModelForCausalLM.from_pretrained(aligned, dtype=torch.float32)
    with pytest.raises(Exception, match="pass --dtype"):
        CandidateModel.attach(model, run)


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_generations_equal_those_of_the_merged_checkpoint_loaded_with_transformers(
    tmp_path, expo, steered, temperature
):
    sft, aligned = steered
    tokenizer = word_tokenizer()
    ids = encode_prompts(tokenizer, PROMPTS[:10], chat_template=True)
    decoding = Decoding(
        max_new_tokens=12,
        temperature=temperature,
        samples_per_prompt=1 if not temperature else 3,
        batch_size=4,
        seed=7,
    )
    candidate = candidate_for(sft, aligned)
    for alpha in (1.5, 0.4):
        candidate.set_alpha(alpha, MergeOptions())
        tuned = generate(candidate.model, tokenizer, ids, decoding)
        out = tmp_path / f"merged-{alpha:g}"
        assert expo("merge", "--sft", sft, "--aligned", aligned, "-o", out, "--alpha", alpha, "-q").code == 0
        loaded = AutoModelForCausalLM.from_pretrained(out).eval()
        reference = generate(loaded, tokenizer, ids, decoding)
        assert [r.text for r in tuned] == [r.text for r in reference]
        assert [r.tokens for r in tuned] == [r.tokens for r in reference]
        assert any(r.tokens > 0 for r in tuned)


def test_the_same_seed_gives_the_same_responses_and_alpha_changes_them(steered):
    sft, aligned = steered
    tokenizer = word_tokenizer()
    ids = encode_prompts(tokenizer, PROMPTS, chat_template=True)
    decoding = Decoding(max_new_tokens=10, temperature=1.0, batch_size=8)
    candidate = candidate_for(sft, aligned)
    candidate.set_alpha(0.0, MergeOptions())
    first = generate(candidate.model, tokenizer, ids, decoding)
    candidate.set_alpha(3.0, MergeOptions())
    other = generate(candidate.model, tokenizer, ids, decoding)
    candidate.set_alpha(0.0, MergeOptions())
    again = generate(candidate.model, tokenizer, ids, decoding)
    assert first == again
    assert first != other
    share = [sum(r.text.split().count("w7") for r in rs) / sum(r.tokens for r in rs) for rs in (first, other)]
    assert share[1] > share[0] + 0.2, share  # the constructed alignment direction, amplified


def test_tune_picks_the_alpha_that_amplifies_the_rewarded_behaviour(tmp_path, expo, steered, prompts_file, grader):
    sft, aligned = steered
    out = tmp_path / "chosen"
    run = tune(
        expo,
        sft,
        aligned,
        prompts_file,
        grader,
        "--alpha",
        "0.5,2",
        "--max-new-tokens",
        "10",
        "--samples-per-prompt",
        "2",
        "--temperature",
        "1",
        "--json",
        "--plot",
        tmp_path / "tune.png",
        "--save-responses",
        tmp_path / "responses.jsonl",
        "--output",
        out,
        "--holdout",
        "0.5",
    )
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert [c["alpha"] for c in report["candidates"]] == [0.0, 0.5, 2.0]
    assert report["alpha"] == 2.0 and report["confirmed"]
    assert report["split"] == {"fraction": 0.5, "selection": 12, "confirmation": 12}
    best = report["candidates"][2]
    assert best["significant"] and best["gain_simultaneous"]["low"] > 0
    assert best["reward"]["estimate"] > report["candidates"][0]["reward"]["estimate"]
    assert report["confirmation"]["stats"]["gain"]["low"] > 0
    assert "largest α tried" in run.stderr  # the peak may lie further out
    assert (
        f"plot: {tmp_path / 'tune.png'}" in run.stderr and f"responses: {tmp_path / 'responses.jsonl'}" in run.stderr
    )
    advice = "power: 12 selection and 12 held-out prompts, 2 candidate(s): a gain of "
    assert advice in run.stderr and run.stderr.index(advice) < run.stderr.index("α=0")  # said before generating
    assert report["power"]["detectable_sd"] == pytest.approx(power.detectable(12, 12, 2))
    assert report["power"]["detectable_reward"] == pytest.approx(
        report["power"]["detectable_sd"] * report["power"]["gain_sd"]
    )
    assert sorted(report["timing"]) == [
        "confirmation:0",
        "confirmation:2",
        "selection:0",
        "selection:0.5",
        "selection:2",
    ]
    for timing in report["timing"].values():
        assert timing["update_seconds"] >= 0 and timing["generate_seconds"] > 0
    assert (tmp_path / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(line) for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert len(lines) == (3 * 12 + 2 * 12) * 2  # every candidate on the selection part, two on the held-out part
    assert {(line["alpha"], line["part"]) for line in lines} == {
        (0.0, "selection"),
        (0.5, "selection"),
        (2.0, "selection"),
        (0.0, "confirmation"),
        (2.0, "confirmation"),
    }
    assert all(line["prompt"] == PROMPTS[line["prompt_index"]] for line in lines)
    # The chosen checkpoint is expo merge's output at that α, with how α was chosen recorded.
    assert report["output"] == str(out.resolve())
    assert expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "plain", "--alpha", "2", "-q").code == 0
    plain, chosen = read_all(tmp_path / "plain"), read_all(out)
    assert all(torch.equal(plain[name], chosen[name]) for name in plain)
    record = json.loads((out / "config.json").read_text())["expo"]
    assert record["alpha"] == 2.0 and record["tuning"]["chosen_alpha"] == 2.0
    assert record["tuning"]["reward"] == "grader.py:w7_share"
    assert record["tuning"]["confirmation"]["confirmed"] and record["tuning"]["decoding"]["max_new_tokens"] == 10
    card = (out / "README.md").read_text()
    assert "## How α was chosen" in card and "(significant)" in card and "confirmed on 12 held-out prompts" in card
    assert "scored by `grader.py:w7_share`" in card and "| 0 | " in card and " | baseline | " in card
    shown = {c["alpha"]: c for c in report["candidates"]}
    for recorded in record["tuning"]["candidates"]:  # labelled simultaneous: the simultaneous interval, not another
        if recorded["alpha"] != 0:
            interval = shown[recorded["alpha"]]["gain_simultaneous"]
            assert recorded["gain"] == [round(interval[k], 6) for k in ("estimate", "low", "high")]
    for text in (card, (out / "config.json").read_text()):
        assert str(tmp_path) not in text


def test_the_held_out_prompts_are_spent_once_another_reward_is_a_later_stricter_look(
    tmp_path, expo, steered, prompts_file, grader
):
    """The same data tested again is the same look (nothing recorded twice), whatever the reward is called; the same
    held-out prompts judged by another reward are look 2, tested at 97.5%, and recorded with its settings; --fresh
    keeps the record, and responses made with other settings on the same prompts are look 3."""
    sft, aligned = steered
    settings = ["--alpha", "2", "--max-new-tokens", "10", "--temperature", "1", "--holdout", "0.5", "--json", "-q"]
    settings += ["--run-dir", tmp_path / "run"]
    first = tune(expo, sft, aligned, prompts_file, grader, *settings)
    assert first.code == 0, first.stderr
    looks_file = tmp_path / "run" / "looks.jsonl"
    [record] = [json.loads(line) for line in looks_file.read_text().splitlines()]
    assert record["look"] == 1 and record["alpha"] == 2.0 and record["level"] == 0.95 and record["confirmed"]
    again = json.loads(tune(expo, sft, aligned, prompts_file, grader, *settings).stdout)
    assert again["confirmation"]["look"] == {"number": 1, "level": 0.95, "repeated": True}
    assert len(looks_file.read_text().splitlines()) == 1
    copy = tmp_path / "copy.py"  # another name, the same scores: the same data tested, the same look
    copy.write_text(grader.read_text())
    same = json.loads(tune(expo, sft, aligned, prompts_file, copy, *settings).stdout)
    assert same["confirmation"]["look"] == {"number": 1, "level": 0.95, "repeated": True}
    other = tmp_path / "other.py"  # another reward: other data on the same prompts
    other.write_text(grader.read_text().replace("return words.count", "return 1 + words.count"))
    second = tune(expo, sft, aligned, prompts_file, other, *settings)
    report = json.loads(second.stdout)
    assert report["confirmation"]["look"] == {"number": 2, "level": 0.975, "repeated": False}
    assert "look 2 at these prompts: a 97.500% interval" in report["confirmation"]["note"]
    assert [json.loads(line)["look"] for line in looks_file.read_text().splitlines()] == [1, 2]
    fresh = json.loads(tune(expo, sft, aligned, prompts_file, grader, *settings, "--fresh").stdout)
    assert fresh["confirmation"]["look"]["number"] == 1 and fresh["confirmation"]["look"]["repeated"]
    assert fresh["run"]["reused"] == 0 and len(looks_file.read_text().splitlines()) == 2
    # other decoding settings make other responses: on the same held-out prompts, that is a new look
    shorter = [*settings[:3], "9", *settings[4:]]
    assert shorter[2:4] == ["--max-new-tokens", "9"]
    changed = json.loads(tune(expo, sft, aligned, prompts_file, grader, *shorter, "--fresh").stdout)
    assert changed["confirmation"]["look"] == {"number": 3, "level": 0.9875, "repeated": False}


def test_a_second_reward_judges_the_held_out_prompts_and_shows_the_first_one_over_optimised(
    tmp_path, expo, steered, prompts_file, grader
):
    """The selection rewards w7; a confirming reward that penalises it disagrees on the same held-out responses:
    not confirmed (the selection reward's own held-out gain shown beside), nothing written, exit code 8. Only the
    held-out responses are scored by it, and nothing is generated twice."""
    sft, aligned = steered
    (tmp_path / "contrary.py").write_text("def no_w7(prompt, response):\n    return -response.split().count('w7')\n")
    settings = ["--alpha", "2", "--max-new-tokens", "10", "--temperature", "1", "--holdout", "0.5", "--json", "-q"]
    settings += ["--run-dir", tmp_path / "run", "--output", tmp_path / "chosen"]
    run = tune(
        expo, sft, aligned, prompts_file, grader, *settings, "--confirm-reward-fn", f"{tmp_path / 'contrary.py'}:no_w7"
    )
    assert run.code == 8, run.stderr
    report = json.loads(run.stdout)
    verdict = report["confirmation"]
    assert report["alpha"] == 2.0 and not report["confirmed"] and report["confirm_reward"] == "contrary.py:no_w7"
    assert verdict["stats"]["gain"]["high"] < 0 < verdict["selection_reward_stats"]["gain"]["low"]
    assert "not confirmed on 12 held-out prompts by --confirm-reward" in verdict["note"]
    assert (
        "lies below 0 (the selection's reward may have been over-optimised); the selection's reward there"
        in verdict["note"]
    )
    assert report["run"]["generated"] == (2 + 2) * 12 and not (tmp_path / "chosen").exists()
    scored = sorted(
        p.relative_to(tmp_path / "run" / "rewards").parts[1:] for p in (tmp_path / "run" / "rewards").rglob("*.jsonl")
    )
    assert (
        scored.count(("confirmation", "alpha=0.0.jsonl")) == 2 and scored.count(("selection", "alpha=2.0.jsonl")) == 1
    )
    same = tune(
        expo, sft, aligned, prompts_file, grader, *settings, "--confirm-reward-fn", f"{tmp_path / 'contrary.py'}:no_w7"
    )
    assert json.loads(same.stdout)["run"]["generated"] == 0
    both = tune(
        expo, sft, aligned, prompts_file, grader, "--confirm-reward-fn", "x.py:f", "--confirm-reward-model", "rm"
    )
    assert both.code == 2 and "at most one of --confirm-reward-model and --confirm-reward-fn" in both.stderr
    missing = tune(expo, sft, aligned, prompts_file, grader, "--confirm-reward-fn", "nothere.py:f", "--holdout", "0.5")
    assert missing.code == 3 and "--confirm-reward-fn nothere.py:f: no such file nothere.py" in missing.stderr


def test_search_refines_around_the_best_grid_point(tmp_path, expo, steered, prompts_file, grader):
    sft, aligned = steered
    run = tune(
        expo,
        sft,
        aligned,
        prompts_file,
        grader,
        "--alpha",
        "1",
        "--search",
        "--budget",
        "4",
        "--max-new-tokens",
        "6",
        "--temperature",
        "1",
        "--limit",
        "8",
        "--json",
        "-q",
    )
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["prompts"] == 8
    assert report["evaluated_order"][:3] == [0.0, 1.0, 2.0]  # still rising at the grid's end: it looks further out
    stopped = report["search"]["stopped"]
    assert stopped == "budget" if len(report["evaluated_order"]) == 4 else stopped in ("noise floor", "degeneration")
    assert report["search"]["budget"] == 4


def test_a_reward_model_scores_each_conversation_with_its_own_template_as_unpadded(tmp_path):
    torch.manual_seed(3)
    tokenizer = word_tokenizer()
    save_reward_model(tmp_path / "rm", tokenizer)
    rm = RewardModel(str(tmp_path / "rm"), batch_size=3)
    prompts = ["w9 w10", "w11", "w12 w13 w14 w15", "w16", "w17 w18"]
    responses = ["w20 w21 w22", "w23", "w24 w25", "w26 w27 w28 w29 w30", ""]
    scores = rm.score(prompts, responses)
    for prompt, response, score in zip(prompts, responses, scores, strict=True):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        assert ids[0, 0].item() == tokenizer.bos_token_id and (ids == tokenizer.bos_token_id).sum() == 1
        with torch.no_grad():
            alone = rm.model(input_ids=ids).logits[0, 0].item()
        assert score == pytest.approx(alone, abs=1e-5)
    assert len(set(scores)) == len(scores)


def test_tune_with_a_reward_model_end_to_end(tmp_path, expo, steered, prompts_file):
    sft, aligned = steered
    save_reward_model(tmp_path / "rm", word_tokenizer())
    settings = "--alpha 1 --max-new-tokens 5 --limit 6".split()
    run = expo(
        "tune",
        "--sft",
        sft,
        "--aligned",
        aligned,
        "--prompts",
        prompts_file,
        "--reward-model",
        tmp_path / "rm",
        *settings,
    )
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split()[:3] == ["α", "reward", "[95%"]
    assert [line.split()[0] for line in lines[1:3]] == ["0", "1"]
    assert lines[-2].startswith("Chosen α = ") and lines[-1].startswith("Held out: nothing")
    assert "α=1" in run.stderr  # one progress bar per candidate


def test_quiet_prints_only_the_result(tmp_path, expo, steered, prompts_file, grader):
    sft, aligned = steered
    run = tune(
        expo,
        sft,
        aligned,
        prompts_file,
        grader,
        "--alpha",
        "0.1",
        "--max-new-tokens",
        "3",
        "--limit",
        "4",
        "-q",
    )
    assert run.code == 0
    warnings = run.stderr.splitlines()  # 4 prompts are few, 3 tokens cut every response; no progress bars
    assert [w.split(":")[0] for w in warnings] == ["Warning"] * 2 and "cut at --max-new-tokens" in warnings[1]
    assert "Chosen α = 0 on 4 selection prompts: no candidate beats the aligned model" in run.stdout
    run = tune(expo, sft, aligned, prompts_file, grader, "--alpha", "0.1", "--max-new-tokens", "3", "--limit", "4")
    assert run.stderr.strip().splitlines()[-2:] == [
        "Next:",
        "  No α of the grid beat α = 0; an under-trained aligned model may need α of 1-25: run the same expo tune "
        "with --alpha 1,2,5,10",
    ]


def test_errors_come_before_any_generation(tmp_path, expo, steered, prompts_file, grader, llama_pair):
    sft, aligned = steered
    broken_tokenizer = shutil.copytree(llama_pair[1], tmp_path / "broken-tokenizer")
    (broken_tokenizer / "tokenizer.json").write_text("{ not a tokenizer")
    base = ["tune", "--sft", sft, "--aligned", aligned, "--prompts", prompts_file]
    fn = ["--reward-fn", f"{grader}:w7_share"]
    cases = [
        (base, 2, "pass one objective: --reward-model, --reward-fn, --task or --judge"),
        (base + fn + ["--reward-model", "x"], 2, "pass one objective"),
        (base + ["--judge", "gpt-x"], 2, "--judge MODEL and --judge-url URL go together"),
        (base + ["--judge", "gpt-x", "--judge-url", "ftp://x"], 2, "--judge-url 'ftp://x': an http(s) URL"),
        (base + fn + ["--guard", "tiny:-1"], 2, "--guard 'tiny:-1'"),
        (["tune", "--sft", sft, "--aligned", aligned, *fn], 2, "--prompts FILE|ORG/NAME"),
        (base + ["--reward-fn", f"{grader}:missing"], 3, "has no function 'missing'"),
        (base + ["--reward-fn", "nonexistent_module_xyz:f"], 3, "cannot import nonexistent_module_xyz"),
        (base + ["--reward-fn", "no-colon"], 2, "module:function"),
        (base + ["--reward-model", tmp_path / "nowhere"], 3, "cannot load a sequence-classification model"),
        (base + fn + ["--budget", "9"], 2, "--budget needs --search"),
        (base + fn + ["--search", "--budget", "2", "--alpha", "1,2"], 2, "the grid alone has 3"),
        (base + fn + ["--alpha", "0.5,0.5"], 2, "repeated"),
        (base + fn + ["--temperature", "0", "--samples-per-prompt", "2"], 2, "needs sampling"),
        (base + fn + ["--limit", "0"], 2, "--limit 0"),
        (["tune", "--sft", sft, "--aligned", aligned, "--prompts", tmp_path / "none.jsonl", *fn], 3, "no such file"),
        (
            ["tune", "--sft", llama_pair[0], "--aligned", broken_tokenizer, "--prompts", prompts_file, *fn],
            3,
            "cannot load its tokenizer",
        ),
        (base + fn + ["--output", aligned], 5, ""),
        (base + fn + ["--push-to-hub", "me/x"], 2, "needs --output"),
        (base + fn + ["--backend", "tgi"], 2, "--backend 'tgi': choose one of transformers, vllm"),
        (base + fn + ["--tensor-parallel-size", "2"], 2, "--tensor-parallel-size needs --backend vllm"),
    ]
    if importlib.util.find_spec("vllm") is None:  # this environment (the vLLM one has its own tests)
        cases.append((base + fn + ["--backend", "vllm"], 2, "vLLM is not installed"))
    for args, code, message in cases:
        run = expo(*args)
        assert run.code == code, (args, run.stderr)
        assert message in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stderr and "α=0:" not in run.stderr  # nothing was generated
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("Error:") and message in last, run.stderr  # ends with one clear line


def test_a_model_without_a_chat_template_needs_the_option(tmp_path, expo, steered, prompts_file, grader):
    sft, aligned = steered
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in aligned.iterdir():
        if f.name != "chat_template.jinja":
            (bare / f.name).write_bytes(f.read_bytes())
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    args = [
        "tune",
        "--sft",
        sft,
        "--aligned",
        bare,
        "--prompts",
        prompts_file,
        "--reward-fn",
        f"{grader}:w7_share",
        "--alpha",
        "1",
        "--max-new-tokens",
        "3",
        "--limit",
        "3",
        "-q",
    ]
    run = expo(*args)
    assert run.code == 3 and "--no-chat-template" in run.stderr
    assert expo(*args, "--no-chat-template").code == 0


def test_a_failing_reward_function_names_itself(tmp_path, expo, steered, prompts_file):
    sft, aligned = steered
    (tmp_path / "bad.py").write_text(
        "def nan(p, r):\n    return float('nan')\n\n\ndef boom(p, r):\n    raise KeyError(r)\n"
    )
    for name, message in (("nan", "returned nan; it must return a finite number"), ("boom", "raised KeyError")):
        run = expo(
            "tune",
            "--sft",
            sft,
            "--aligned",
            aligned,
            "--prompts",
            prompts_file,
            "--reward-fn",
            f"{tmp_path / 'bad.py'}:{name}",
            "--max-new-tokens",
            "2",
            "--limit",
            "2",
            "-q",
        )
        assert run.code == 3 and f"--reward-fn bad.py:{name}" in run.stderr and message in run.stderr


def test_an_unconfirmed_choice_is_written_only_with_force(
    tmp_path, expo, hub, steered, prompts_file, grader, monkeypatch
):
    """No prompts held out: the choice is not confirmed and --output stays unwritten; --force writes it (and pushes
    it), generating nothing again: the run folder holds every response."""
    monkeypatch.setenv("HF_TOKEN", "write-token")
    sft, aligned = steered
    args = ["--alpha", "2", "--max-new-tokens", "8", "--temperature", "1", "--output", tmp_path / "chosen"]
    args += ["--push-to-hub", "me/tuned", "--json", "-q", "--run-dir", tmp_path / "run"]
    unconfirmed = tune(expo, sft, aligned, prompts_file, grader, *args)
    assert unconfirmed.code == 8, unconfirmed.stderr  # a script can tell that nothing was written
    report = json.loads(unconfirmed.stdout)  # the results are still on stdout
    assert report["alpha"] == 2.0 and not report["confirmed"] and "output" not in report
    assert report["confirmation"]["note"].startswith("nothing was confirmed: no prompts were held out")
    assert unconfirmed.stderr.strip().splitlines()[-1] == (
        "Error: --output chosen not written: α=2 was chosen but nothing was confirmed: no prompts were held out "
        "(--holdout; the default holds out 30% from 100 prompts on); --force writes it anyway"
    )
    assert not (tmp_path / "chosen").exists()
    largest = (
        "α = 2 is the largest tried: run the same expo tune with --alpha 2,4,8 (or --search) to see whether more helps"
    )
    assert report["next"][0] == largest and report["next"][1].startswith("Nothing was held out: about ")
    assert len(report["next"]) == 2  # nothing written: nothing to verify
    run = tune(expo, sft, aligned, prompts_file, grader, *args, "--force")
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["run"] == {"dir": str(tmp_path / "run"), "generated": 0, "reused": 2 * len(PROMPTS)}
    assert report["alpha"] == 2.0 and "commit_url" in report
    assert report["next"][-2:] == [
        f"Check the output: expo verify chosen --sft {sft.name} --aligned {aligned.name}",
        "Publish it: expo push chosen ORG/NAME",
    ]
    from huggingface_hub import snapshot_download

    back = Path(snapshot_download("me/tuned", cache_dir=tmp_path / "cache"))
    assert (back / "model.safetensors").read_bytes() == (tmp_path / "chosen" / "model.safetensors").read_bytes()
    assert json.loads((back / "config.json").read_text())["expo"]["tuning"]["chosen_alpha"] == 2.0


def test_a_reward_model_from_the_hub_and_a_mixed_dtype_checkpoint(
    tmp_path, expo, hub, steered, prompts_file, monkeypatch
):
    """The RM by repo id (through the test Hub); a checkpoint whose norms are float32 and the rest bfloat16 is
    tuned in the dtype the model loads in (bfloat16), as `expo merge --dtype bfloat16` would write it."""
    from safetensors.torch import load_file, save_file

    from helpers import files_of

    monkeypatch.setenv("HF_TOKEN", "write-token")
    save_reward_model(tmp_path / "rm", word_tokenizer())
    hub.create("org/tiny-rm", files_of(tmp_path / "rm"))
    pair = {}
    for side, folder in zip(("sft", "aligned"), steered, strict=True):
        pair[side] = tmp_path / side
        pair[side].mkdir()
        for f in folder.iterdir():
            (pair[side] / f.name).write_bytes(f.read_bytes())
        tensors = load_file(folder / "model.safetensors")
        mixed = {k: v if "norm" in k else v.to(torch.bfloat16) for k, v in tensors.items()}
        save_file(mixed, pair[side] / "model.safetensors", metadata={"format": "pt"})
        settings = json.loads((pair[side] / "config.json").read_text())
        (pair[side] / "config.json").write_text(json.dumps({**settings, "dtype": "bfloat16"}))
    run = expo(
        "tune",
        "--sft",
        pair["sft"],
        "--aligned",
        pair["aligned"],
        "--prompts",
        prompts_file,
        "--reward-model",
        "org/tiny-rm",
        "--alpha",
        "1",
        "--max-new-tokens",
        "4",
        "--limit",
        "4",
        "--json",
        "-q",
    )
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["model_dtype"] == "bfloat16" and report["reward"] == "org/tiny-rm"
    assert [c["alpha"] for c in report["candidates"]] == [0.0, 1.0]


def test_a_short_context_reward_model_is_announced_before_generating_and_its_cuts_counted(
    tmp_path, expo, steered, prompts_file
):
    sft, aligned = steered
    rm = eos_terminated_reward_model(tmp_path / "rm", max_position_embeddings=16)
    settings = "--alpha 1 --max-new-tokens 12 --limit 6 --json".split()
    command = ["tune", "--sft", sft, "--aligned", aligned, "--prompts", prompts_file, "--reward-model", rm, *settings]
    refused = expo(*command)
    assert refused.code == 2 and "α=0" not in refused.stderr  # before any generation
    assert refused.stderr.strip().splitlines()[-1] == (
        "Error: --reward-model rm reads at most 16 tokens: a response of --max-new-tokens 12 and its template (5) "
        "do not fit, so long answers would lose their end before scoring; lower --max-new-tokens to 11 or pass "
        "--allow-cut-responses"
    )
    run = expo(*command, "--allow-cut-responses")
    assert run.code == 0, run.stderr
    warning = "--reward-model rm reads at most 16 tokens; prompts up to 8 and responses up to 12 tokens may not fit"
    assert warning in run.stderr and run.stderr.index(warning) < run.stderr.index("α=0")  # before any generation
    report = json.loads(run.stdout)
    for candidate in report["candidates"]:  # <s> w4 (3 words) </s> w5 (response) </s>: cut past 8 response words
        kept = Path(report["run"]["dir"]) / "generations" / "selection" / f"alpha={float(candidate['alpha'])!r}.jsonl"
        texts = [r[2] for line in kept.read_text().splitlines() for r in json.loads(line)["responses"]]
        # the prompt goes first; only a response longer than 11 words (16 - 5 around it) loses its end
        cut = candidate["prompt_cut_for_reward"] + candidate["response_cut_for_reward"]
        assert cut == sum(len(t.split()) > 8 for t in texts) > 0
        assert candidate["response_cut_for_reward"] == sum(len(t.split()) > 11 for t in texts)
        finished = [json.loads(line) for line in kept.read_text().splitlines()]
        lengths = [r[3] for line in finished for r in line["responses"]]
        cut_at_limit = sum(n >= 12 for n in lengths)
        unfit = candidate["response_cut_for_reward"]
        assert candidate["truncated"] == pytest.approx((cut_at_limit + unfit - min(unfit, cut_at_limit)) / len(texts))


def test_cut_answers_stay_cut_in_every_file_tune_writes(tmp_path, expo, steered, prompts_file, grader):
    """An answer stopped by --max-new-tokens is "length" in --save-responses and result.json, and flagged as cut
    in the report (re-rendered from the run folder too), never shown as complete."""
    sft, aligned = steered
    run = tune(
        expo, sft, aligned, prompts_file, grader, "--alpha", "1", "--max-new-tokens", "2", "--limit", "6",
        "--save-responses", tmp_path / "responses.jsonl", "--run-dir", tmp_path / "run", "-q",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    saved = [json.loads(line) for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert saved and {r["finish"] for r in saved} == {"length"} and all(r["tokens"] == 2 for r in saved)
    kept = json.loads((tmp_path / "run" / "result.json").read_text())["records"]
    assert [r["finish"] for r in kept] == [r["finish"] for r in saved]
    assert expo("report", tmp_path / "run", "-o", tmp_path / "page.html").code == 0
    assert (tmp_path / "page.html").read_text().count('"finish": "length"') == len(saved)
