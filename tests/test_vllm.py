"""expo tune --backend vllm: an engine whose weights are set to θ(α) in place generates, token for token, what an
engine started on `expo merge`'s output at that α generates.

These tests run in the vLLM environment `make test` builds (.venv-vllm, vLLM's CPU build; conftest leaves this
file out of an environment without vLLM). vLLM's CPU attention needs heads of 64, so the models here are wider
than the other tests' (hidden 256, 4 heads).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import vllm  # noqa: E402,F401  (these tests exist to run it: an environment without it fails here)

import expo_cli  # noqa: E402
from expo_cli.merging.api import prepare  # noqa: E402
from expo_cli.options import MergeOptions  # noqa: E402
from expo_cli.tuning.backends.generation import Decoding, encode_prompts  # noqa: E402
from expo_cli.tuning.backends.serving import VllmPolicy, request_seed, vllm_version  # noqa: E402
from helpers import build_model, llama_config, perturb, read_all, save, word_tokenizer  # noqa: E402

PROMPTS = [" ".join(f"w{4 + (i * 7 + j) % 90}" for j in range(3 + i % 5)) for i in range(5)]
# ... and one longer than a KV-cache block (128 tokens on a CPU): a prefix cache kept across α would serve it
PROMPTS.append(" ".join(f"w{4 + (j * 13) % 90}" for j in range(200)))
GREEDY = Decoding(max_new_tokens=24, temperature=0)


def wide_config(**overrides):
    return llama_config(
        hidden_size=256,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        **overrides,
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """A bfloat16 pair far enough apart (scale 0.02) that greedy answers change with α."""
    root = tmp_path_factory.mktemp("wide")
    sft = save(build_model(wide_config(), 0), root / "sft", torch.bfloat16)
    aligned = save(perturb(build_model(wide_config(), 0), seed=1, scale=0.02), root / "aligned", torch.bfloat16)
    for folder in (sft, aligned):
        word_tokenizer().save_pretrained(folder)
    return sft, aligned


def start(
    model: Path, sft: Path, aligned: Path, decoding: Decoding = GREEDY, tensor_parallel_size: int = 1, **options
) -> VllmPolicy:
    """An engine on `model`, whose in-place updates are θ(α) of (sft, aligned) as `expo merge` computes them."""
    run = prepare(sft, aligned, {}, MergeOptions(progress=False, **options))
    dtype = options.get("dtype") or run.main.pairing.dominant_dtype()
    tokenizer = word_tokenizer()
    ids = prompt_ids(tokenizer)
    return VllmPolicy.start(
        model, model, tokenizer, dtype, run, decoding, ids, tensor_parallel_size=tensor_parallel_size
    )


def prompt_ids(tokenizer=None) -> list[list[int]]:
    return encode_prompts(tokenizer or word_tokenizer(), PROMPTS, chat_template=True)


def answers(policy: VllmPolicy) -> list[tuple[str, int, str]]:
    return [(r.text, r.tokens, r.finish) for r in policy.batch(0, list(range(len(PROMPTS))), prompt_ids())]


def fresh_answers(model: Path, sft: Path, aligned: Path, decoding: Decoding = GREEDY, **options):
    """What an engine started on a checkpoint generates (no in-place update)."""
    policy = start(model, sft, aligned, decoding, **options)  # type: ignore[arg-type]
    try:
        return answers(policy)
    finally:
        policy.close()


def test_in_place_updates_generate_what_the_merged_checkpoints_do(tmp_path, pair):
    sft, aligned = pair
    merged = expo_cli.sweep(sft, aligned, tmp_path / "sweep", [2.0, -1.0], progress=False)
    policy = start(aligned, sft, aligned)
    try:
        loaded = answers(policy)  # the aligned model as vLLM loaded it
        seen = {}
        for alpha in (2.0, -1.0, 0.5, 0.0):  # out of order, and back to the aligned model
            policy.set_alpha(alpha, warn=pytest.fail)
            seen[alpha] = answers(policy)
    finally:
        policy.close()
    assert seen[0.0] == loaded
    assert len({tuple(v) for v in seen.values()}) == 4, "α must change the greedy answers of this pair"
    for result in merged:
        assert fresh_answers(result.output, sft, aligned) == seen[result.alpha], f"α={result.alpha:g}"


@pytest.fixture(scope="module", params=["tied", "tied, the head also stored"])
def tied_pair(tmp_path_factory, request) -> tuple[Path, Path]:
    """As `pair`, with the LM head tied to the input embedding (one stored matrix, two modules in vLLM); or, as some
    checkpoints are saved, with a copy of it stored as lm_head.weight too."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("tied")
    config = wide_config(tie_word_embeddings=True)
    sft = save(build_model(config, 0), root / "sft", torch.bfloat16)
    aligned = save(perturb(build_model(config, 0), seed=1, scale=0.02), root / "aligned", torch.bfloat16)
    for folder in (sft, aligned):
        word_tokenizer().save_pretrained(folder)
        if request.param != "tied":
            tensors = load_file(folder / "model.safetensors")
            assert "lm_head.weight" not in tensors
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
            save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return sft, aligned


def test_a_tied_embedding_model_answers_as_its_merged_checkpoint_after_every_update(tmp_path, tied_pair):
    """vLLM's reload leaves a tied head's packed copy (CPU) as loaded: expo processes it again after each update."""
    sft, aligned = tied_pair
    merged = expo_cli.sweep(sft, aligned, tmp_path / "sweep", [2.0, -1.0], progress=False)
    policy = start(aligned, sft, aligned)
    try:
        loaded = answers(policy)
        seen = {}
        for alpha in (2.0, -1.0):
            policy.set_alpha(alpha, warn=pytest.fail)
            seen[alpha] = answers(policy)
    finally:
        policy.close()
    for result in merged:
        assert seen[result.alpha] != loaded, "α must change the greedy answers of this pair"
        assert fresh_answers(result.output, sft, aligned) == seen[result.alpha], f"α={result.alpha:g}"


def test_an_incomplete_or_overflowing_update_is_refused_and_fences_the_engine(monkeypatch, tmp_path, pair):
    """A parameter vLLM received no value for would keep the previous α's: refused by name. An overflow part-way
    still finishes vLLM's reload, then nothing is generated until an update completes."""
    from expo_cli.errors import ExpoError, MismatchError, NonFiniteError

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: the test may reach into a worker
    sft, aligned = pair
    merged = expo_cli.merge(sft, aligned, tmp_path / "out", 2.0, progress=False, dtype="float16")
    policy = start(aligned, sft, aligned, dtype="float16")  # float16 overflows at a large α
    try:
        loaded = answers(policy)
        with pytest.raises(NonFiniteError):
            policy.set_alpha(1e9, warn=lambda message: None)
        with pytest.raises(ExpoError, match="not generating: the update to α=1e\\+09 did not complete"):
            answers(policy)
        policy.set_alpha(2.0, warn=pytest.fail)
        complete = answers(policy)

        def leave_out_the_final_norm(worker):
            pairing = worker.expo_weights.pairing
            pairing.tensors = [t for t in pairing.tensors if t.name != "model.norm.weight"]

        def hand_over_one_value_changed(worker):
            """What a loader that lost or altered a value would leave: the engine holds something else."""
            worker = getattr(worker, "worker", worker)  # vLLM's worker inside its wrapper
            computed = worker._expo_tensors

            def changed(*args, **kwargs):
                for name, tensor in computed(*args, **kwargs):
                    if name == "model.layers.1.mlp.down_proj.weight":
                        tensor.view(torch.int16)[5, 7] += 1
                    yield name, tensor

            worker._expo_tensors = changed

        policy.llm.collective_rpc(hand_over_one_value_changed)
        wrong = (
            "1 weight\\(s\\) of the engine do not hold the values expo computed, e.g. 'model.layers.1.mlp.down_proj"
        )
        with pytest.raises(ExpoError, match=wrong):
            policy.set_alpha(2.0, warn=lambda message: None)
        with pytest.raises(ExpoError, match="not generating"):
            answers(policy)
        policy.llm.collective_rpc(lambda worker: delattr(getattr(worker, "worker", worker), "_expo_tensors"))
        policy.set_alpha(2.0, warn=pytest.fail)
        assert answers(policy) == complete
        # every tensor's region checked: q, k and v each a part of qkv_proj, gate and up each half of gate_up_proj
        assert policy.last_update[0]["regions_checked"] == len(read_all(aligned))

        def cannot_learn(worker):  # as with a vLLM whose loaders expo cannot follow
            from expo_cli.tuning.backends.slicing import Layout

            worker = getattr(worker, "worker", worker)
            worker.expo_layout = Layout(unlearned={"model.norm.weight": "RuntimeError: planted"})

        policy.llm.collective_rpc(cannot_learn)
        policy.last_update, said = [], []  # as on a first update
        policy.set_alpha(2.0, warn=said.append)
        assert said == [
            "--backend vllm: expo could not learn how this vLLM loads the model (RuntimeError: planted); every "
            "worker computes whole tensors, and its weights are checked for completeness only"
        ]
        assert answers(policy) == complete and policy.last_update[0]["regions_checked"] == 0

        policy.llm.collective_rpc(leave_out_the_final_norm)
        with pytest.raises(
            MismatchError, match="no value for 1 parameter\\(s\\) of the engine, e.g. 'model.norm.weight'"
        ):
            policy.set_alpha(0.5, warn=lambda message: None)
        with pytest.raises(ExpoError, match="not generating"):
            answers(policy)
    finally:
        policy.close()
    assert complete != loaded and complete == fresh_answers(merged.output, sft, aligned, dtype="float16")


def test_a_float32_run_with_a_per_tensor_rule_is_exact_too(tmp_path, pair):
    sft, aligned = pair
    options = {"dtype": "float32", "alpha_for": [r"mlp\.=0.5"]}
    merged = expo_cli.merge(sft, aligned, tmp_path / "out", 3.0, progress=False, **options)
    assert read_all(merged.output)["model.layers.0.mlp.down_proj.weight"].dtype == torch.float32
    policy = start(aligned, sft, aligned, **options)
    try:
        loaded = answers(policy)
        policy.set_alpha(3.0, warn=pytest.fail)
        in_place = answers(policy)
    finally:
        policy.close()
    assert in_place != loaded, "α must change the greedy answers of this pair"
    assert in_place == fresh_answers(merged.output, sft, aligned, **options)


def test_a_lora_input_is_updated_in_place_on_its_base_to_the_merged_model(tmp_path, pair):
    """The LoRA path: the engine runs the base; θ(α) = base + (1+α)·s·B·A merged, exactly as expo merge writes."""
    from peft import LoraConfig, get_peft_model

    _, base = pair
    model = build_model(wide_config(), 0)
    model.load_state_dict(read_all(base), strict=False)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in lora.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    merged = expo_cli.merge(base, adapter, tmp_path / "out", 1.5, progress=False)
    policy = start(base, base, adapter)
    try:
        before = answers(policy)
        policy.set_alpha(1.5, warn=pytest.fail)
        in_place = answers(policy)
    finally:
        policy.close()
    assert in_place != before
    assert in_place == fresh_answers(merged.output, base, adapter)


def test_sampling_is_seeded_per_response_whatever_the_batches(pair):
    sft, aligned = pair
    sampling = Decoding(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=0, samples_per_prompt=2, seed=7)
    policy = start(aligned, sft, aligned, sampling)
    try:
        ids = prompt_ids()
        whole = policy.batch(0, list(range(6)), ids)
        split = policy.batch(1, [4, 0], ids) + policy.batch(2, [5, 3, 2, 1], ids)
    finally:
        policy.close()
    key = lambda r: (r.prompt, r.sample)  # noqa: E731
    assert sorted(whole, key=key) == sorted(split, key=key)
    assert any(a.text != b.text for a, b in zip(whole[::2], whole[1::2], strict=True)), "samples differ"
    assert request_seed(7, 0, 1) != request_seed(7, 1, 0) != request_seed(8, 1, 0)


def expo_command(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "expo_cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def test_tune_on_vllm_end_to_end_with_a_reward_model_then_a_reward_function(tmp_path, pair):
    from helpers import save_reward_model

    sft, aligned = pair
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / "g.py").write_text("def n(prompt, response):\n    return float(response.count('w7'))\n")
    rm = save_reward_model(tmp_path / "rm", word_tokenizer())
    common = ["tune", "--sft", sft, "--aligned", aligned, "--prompts", tmp_path / "p.txt", "--alpha", "0.5,2"]
    common += ["--max-new-tokens", 12, "--backend", "vllm", "--json", "-q"]
    with_model = expo_command(*common, "--reward-model", rm, "--run-dir", tmp_path / "workers", "--data-parallel", 2)
    assert with_model.returncode == 0, with_model.stderr
    result = json.loads(with_model.stdout)
    assert [c["alpha"] for c in result["candidates"]] == [0.0, 0.5, 2.0]
    # Two worker processes, each with its own engine on its own core, answered as one engine does.
    common += ["--run-dir", tmp_path / "run"]
    one = expo_command(*common, "--reward-model", rm)
    assert one.returncode == 0, one.stderr
    apart = {k: v for k, v in json.loads(one.stdout).items() if k not in ("timing", "run")}
    assert apart == {k: v for k, v in result.items() if k not in ("timing", "run")}
    assert list((tmp_path / "run").rglob("*.jsonl")), "responses are kept in the run folder as they are made"
    # Same run folder, another reward: nothing is generated again, the engine does not even start.
    rescored = expo_command(*common, "--reward-fn", f"{tmp_path / 'g.py'}:n", "--rescore")
    assert rescored.returncode == 0, rescored.stderr
    assert [c["alpha"] for c in json.loads(rescored.stdout)["candidates"]] == [0.0, 0.5, 2.0]
    # The responses are vLLM's of this version: a run folder written by another is refused, never mixed.
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["key"]["backend"]["version"] == vllm_version() and vllm_version().startswith("vllm")
    assert saved["key"]["backend"]["batch_invariant"] is False  # VLLM_BATCH_INVARIANT unset: recorded as such
    saved["key"]["backend"]["version"] = "vllm 0.1.0"
    (tmp_path / "run" / "run.json").write_text(json.dumps(saved))
    refused = expo_command(*common, "--reward-fn", f"{tmp_path / 'g.py'}:n", "--rescore")
    assert refused.returncode != 0 and "backend" in refused.stderr.strip().splitlines()[-1]


def test_vllm_errors_are_one_line_before_any_generation(tmp_path):
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():  # the GPU check runs this file too
        pytest.skip("heads of 8 are refused by vLLM's CPU attention only")
    narrow, sft = tmp_path / "narrow", tmp_path / "sft"
    save(build_model(llama_config(bos_token_id=1, eos_token_id=2), 0), sft, torch.bfloat16)  # heads of 8
    save(perturb(build_model(llama_config(bos_token_id=1, eos_token_id=2), 0), 1), narrow, torch.bfloat16)
    word_tokenizer().save_pretrained(narrow)
    (tmp_path / "p.txt").write_text("w9 w10\n")
    (tmp_path / "g.py").write_text("def n(prompt, response):\n    return 1.0\n")
    args = ["tune", "--sft", sft, "--aligned", narrow, "--prompts", tmp_path / "p.txt", "--backend", "vllm"]
    done = expo_command(*args, "--reward-fn", f"{tmp_path / 'g.py'}:n", "--run-dir", tmp_path / "run")
    assert done.returncode == 3, done.stderr
    assert (
        done.stderr.strip().splitlines()[-1].startswith("Error: --backend vllm: narrow has attention heads of size 8")
    )
    assert "Traceback" not in done.stderr
    for folder in (sft, narrow):  # both alike: the pair's own check passes, vLLM's is the one that refuses
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "architectures": ["NotAModelForCausalLM"]}))
    done = expo_command(*args, "--reward-fn", f"{tmp_path / 'g.py'}:n", "--run-dir", tmp_path / "run2")
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: --backend vllm: narrow is a NotAModelForCausalLM, which this vLLM cannot load "
        "(use --backend transformers)"
    )
    assert "Traceback" not in done.stderr


def test_tensor_parallel_workers_compute_their_slices_exactly(tmp_path, pair):
    """At TP = 2 each worker computes θ(α) on the rows or columns its loaders keep (learned from vLLM's own
    loaders), reads half the bytes, proves every region it holds, and the engine answers as one started on the
    merged checkpoint at the same TP."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() and torch.cuda.device_count() < 2:  # the GPU check runs this file too
        pytest.skip("tensor parallelism on a GPU needs two of them")
    sft, aligned = pair
    merged = expo_cli.merge(sft, aligned, tmp_path / "out", 2.0, progress=False)
    policy = start(aligned, sft, aligned, tensor_parallel_size=2)
    try:
        loaded = answers(policy)
        policy.set_alpha(2.0, warn=pytest.fail)
        in_place = answers(policy)
        workers = policy.last_update
    finally:
        policy.close()
    assert in_place != loaded, "α must change the greedy answers of this pair"
    assert in_place == fresh_answers(merged.output, sft, aligned, tensor_parallel_size=2)
    tensors = read_all(aligned)
    both_inputs = 2 * sum(t.numel() * t.element_size() for t in tensors.values())
    matrices = [name for name, t in tensors.items() if t.dim() == 2]
    assert [w["rank"] for w in workers] == [0, 1]
    for worker in workers:
        assert worker["sliced"] == len(matrices), worker  # every matrix sharded; the norms replicated
        assert worker["regions_checked"] == len(tensors), worker
        assert 0.45 < worker["bytes_read"] / both_inputs < 0.55, worker
