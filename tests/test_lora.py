"""LoRA adapters as inputs: every merged tensor and every --as-adapter output against PEFT's own merge in float64."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoTokenizer

from expo_cli.inputs.lora_features import FEATURES, markdown
from helpers import add_tokenizer_files, build_model, files_of, gpt2_config, llama_config, read_all, save

ALPHA = 0.7
EPS32 = torch.finfo(torch.float32).eps

ADAPTERS = {
    "llama-embed-patterns-modules-to-save": (
        "llama",
        {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["q_proj", "v_proj", "down_proj", "embed_tokens"],
            "rank_pattern": {"down_proj": 2},
            "alpha_pattern": {"v_proj": 3},
            "modules_to_save": ["lm_head"],
        },
    ),
    "llama-all-linear-rslora": (
        "llama",
        {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "use_rslora": True},
    ),
    "gpt2-conv1d-lora-bias-all-biases": (
        "gpt2",
        {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj"], "lora_bias": True, "bias": "all"},
    ),
    "llama-dora": ("llama", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "o_proj"], "use_dora": True}),
}


def config_of(arch: str):
    return llama_config() if arch == "llama" else gpt2_config(vocab_size=96, bos_token_id=1, eos_token_id=2)


def randomize(model, seed: int, scale: float = 0.05):
    """What training does to an adapter: non-zero B (PEFT starts it at zero), moved whole modules and biases."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * scale)
    return model


def make_adapter(folder: Path, base: Path, arch: str, settings: dict, seed: int = 5, base_name: str | None = None):
    model = build_model(config_of(arch), 0)
    model.load_state_dict(read_all(base), strict=False)
    peft_model = randomize(get_peft_model(model, LoraConfig(**settings)), seed)
    peft_model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_name if base_name is not None else str(base)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def peft_merged(base: dict[str, torch.Tensor], arch: str, *adapters: Path) -> dict[str, torch.Tensor]:
    """θ as PEFT merges it, in float64: each adapter loaded on the previous merge and merged in."""
    model = build_model(config_of(arch), 0).double()
    model.load_state_dict({k: v.double() for k, v in base.items()}, strict=False)
    for adapter in adapters:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return {k: v.double() for k, v in model.state_dict().items()}


def assert_extrapolated(
    out: dict[str, torch.Tensor], sft: dict[str, torch.Tensor], aligned: dict[str, torch.Tensor], alpha: float = ALPHA
) -> None:
    """Every tensor within float32 arithmetic (and one rounding to its dtype) of θ_sft + (1+α)·(θ_aligned − θ_sft)."""
    assert out
    changed = 0
    for name, tensor in out.items():
        s, a = sft[name].double(), aligned[name].double()
        reference = s + (1 + alpha) * (a - s)
        # float32 arithmetic: elementwise on θ_sft, and on the scale of the products of factors (a matrix
        # product's error is relative to its terms, and an SFT adapter's θ_sft is itself computed).
        scale = s.abs() + (1 + abs(alpha)) * (a - s).abs().max() + s.abs().max() / 4
        bound = 16 * EPS32 * scale
        if tensor.dtype != torch.float32:
            bound = bound + torch.finfo(tensor.dtype).eps * reference.abs()
        error = (tensor.double() - reference).abs()
        assert (error <= bound).all(), f"{name}: off by {error.max():.3g}"
        changed += int(not torch.equal(a, s))
    assert changed, "the adapter changed something"


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {arch: save(build_model(config_of(arch), 0), root / arch, torch.float32) for arch in ("llama", "gpt2")}


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_a_merged_adapter_matches_peft_in_float64(tmp_path, expo, bases, kind):
    arch, settings = ADAPTERS[kind]
    sft = bases[arch]
    adapter = make_adapter(tmp_path / "adapter", sft, arch, settings)
    assert expo("merge", "--sft", sft, "--aligned", adapter, "-o", tmp_path / "out", "--alpha", ALPHA, "-q").code == 0
    sft_tensors = read_all(sft)
    assert_extrapolated(read_all(tmp_path / "out"), sft_tensors, peft_merged(sft_tensors, arch, adapter))
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "adapter_config.json" not in files and "config.json" in files
    record = json.loads((tmp_path / "out" / "config.json").read_text())["expo"]
    assert record["aligned"]["name"] == "adapter" and str(tmp_path) not in json.dumps(record)


@pytest.mark.parametrize("kind", [k for k in ADAPTERS if "dora" not in k])
def test_as_adapter_is_the_same_extrapolation_through_peft(tmp_path, expo, bases, kind):
    arch, settings = ADAPTERS[kind]
    sft = bases[arch]
    adapter = make_adapter(tmp_path / "adapter", sft, arch, settings)
    run = expo("merge", "--sft", sft, "--aligned", adapter, "-o", tmp_path / "out", "--alpha", ALPHA, "--as-adapter")
    assert run.code == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    sft_tensors = read_all(sft)
    through_peft = strictly_merged(sft_tensors, arch, tmp_path / "out")
    assert_extrapolated(
        {k: through_peft[k] for k in sft_tensors}, sft_tensors, peft_merged(sft_tensors, arch, adapter)
    )
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == ("llama" if arch == "llama" else "gpt2")  # no local path
    run = expo("verify", tmp_path / "out", "--sft", sft, "--aligned", adapter)
    assert run.code == 2 and "is a PEFT adapter (--as-adapter)" in run.stderr
    card = (tmp_path / "out" / "README.md").read_text()
    assert "library_name: peft" in card and "--as-adapter" in card and str(tmp_path) not in card


def test_dora_as_adapter_is_refused_and_writes_nothing(tmp_path, expo, bases):
    adapter = make_adapter(tmp_path / "adapter", bases["llama"], "llama", ADAPTERS["llama-dora"][1])
    run = expo(
        "merge", "--sft", bases["llama"], "--aligned", adapter, "-o", tmp_path / "out", "--alpha", "1", "--as-adapter"
    )
    assert run.code == 2 and "DoRA" in run.stderr and "drop --as-adapter" in run.stderr
    assert not (tmp_path / "out").exists()


def test_sft_comes_from_the_adapter_config_and_a_mismatch_is_reported(tmp_path, expo, bases):
    adapter = make_adapter(tmp_path / "adapter", bases["llama"], "llama", ADAPTERS["llama-all-linear-rslora"][1])
    run = expo("merge", "--aligned", adapter, "-o", tmp_path / "out", "--alpha", "0.5", "-q")
    assert run.code == 0, run.stderr
    other = tmp_path / "other-sft"
    other.symlink_to(bases["llama"])
    run = expo("merge", "--sft", other, "--aligned", adapter, "-o", tmp_path / "out2", "--alpha", "0.5", "-q")
    assert run.code == 0 and "was trained on" in run.stderr and "other-sft" in run.stderr
    no_base = make_adapter(tmp_path / "nobase", bases["llama"], "llama", ADAPTERS["llama-dora"][1], base_name="")
    run = expo("merge", "--aligned", no_base, "-o", tmp_path / "out3", "--alpha", "0.5")
    assert run.code == 2 and "--sft is required (the adapter's config names no base model)" in run.stderr


@pytest.mark.parametrize("stack", ["on-sft", "continued"])
def test_an_sft_adapter_under_the_aligned_one(tmp_path, expo, bases, stack):
    base = bases["llama"]
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]}
    sft_adapter = make_adapter(tmp_path / "sft-adapter", base, "llama", lora, seed=11)
    base_tensors = read_all(base)
    sft_tensors = peft_merged(base_tensors, "llama", sft_adapter)
    if stack == "on-sft":  # DPO trained on the merged SFT model: its config names the SFT adapter
        start = tmp_path / "merged-sft"
        save(_model_from(sft_tensors), start, torch.float32)
        other = {**lora, "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "o_proj"]}
        aligned = make_adapter(tmp_path / "dpo", start, "llama", other, seed=12, base_name=str(sft_adapter))
        aligned_tensors = peft_merged(sft_tensors, "llama", aligned)
    else:  # DPO continued the SFT adapter: both relative to the base
        aligned = make_adapter(tmp_path / "dpo", base, "llama", lora, seed=13)
        aligned_tensors = peft_merged(base_tensors, "llama", aligned)
    pair = ["--sft", sft_adapter, "--aligned", aligned, "--alpha", ALPHA, "-q"]
    assert expo("merge", *pair, "-o", tmp_path / "full").code == 0
    assert_extrapolated(read_all(tmp_path / "full"), sft_tensors, aligned_tensors)
    assert expo("verify", tmp_path / "full", "--sft", sft_adapter, "--aligned", aligned, "-q").code == 0
    run = expo("merge", *pair, "-o", tmp_path / "adapter", "--as-adapter")
    assert run.code == 0, run.stderr
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    if stack == "on-sft":  # the output applies to the merged SFT model, like the DPO adapter did
        through_peft = strictly_merged(sft_tensors, "llama", tmp_path / "adapter")
    else:  # one adapter of rank 4 + 4 over the base
        assert set(written["rank_pattern"].values()) == {8}
        through_peft = strictly_merged(base_tensors, "llama", tmp_path / "adapter")
    assert_extrapolated({k: through_peft[k] for k in base_tensors}, sft_tensors, aligned_tensors)


def test_as_adapter_copies_lora_a_bit_for_bit_and_scales_only_b(tmp_path, expo, bases):
    """The file contract: lora_A (and lora_embedding_A) unchanged, B the only factor scaled by (1+α)."""
    adapter = make_adapter(
        tmp_path / "adapter", bases["llama"], "llama", ADAPTERS["llama-embed-patterns-modules-to-save"][1]
    )
    run = expo(
        "merge",
        "--sft",
        bases["llama"],
        "--aligned",
        adapter,
        "-o",
        tmp_path / "out",
        "--alpha",
        ALPHA,
        "--as-adapter",
    )
    assert run.code == 0, run.stderr
    written = load_file(tmp_path / "out" / "adapter_model.safetensors")
    trained = load_file(adapter / "adapter_model.safetensors")
    assert written.keys() == trained.keys()
    factors_a = [k for k in trained if ".lora_A." in k or ".lora_embedding_A" in k]
    factors_b = [k for k in trained if ".lora_B." in k or ".lora_embedding_B" in k]
    assert factors_a and factors_b
    for key in factors_a:
        assert torch.equal(written[key], trained[key]), key
    for key in factors_b:  # (1+α)·B in float32, rounded once
        expected = (trained[key].double() * (1 + ALPHA)).float()
        assert torch.allclose(written[key], expected, rtol=2 * EPS32, atol=0), key


def test_a_continued_rslora_stack_as_adapter_gives_peft_the_intended_update(tmp_path, expo, bases):
    """Two rsLoRA adapters (s = α/√r): the combined adapter folds both scales into B, and its config must tell PEFT
    s = 1 (use_rslora off, lora_alpha = r), or PEFT would scale the update again."""
    base = bases["llama"]
    rslora = {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "use_rslora": True}
    sft_adapter = make_adapter(tmp_path / "sft-adapter", base, "llama", rslora, seed=21)
    aligned = make_adapter(tmp_path / "dpo", base, "llama", rslora, seed=22)
    base_tensors = read_all(base)
    sft_tensors = peft_merged(base_tensors, "llama", sft_adapter)
    aligned_tensors = peft_merged(base_tensors, "llama", aligned)
    pair = ["--sft", sft_adapter, "--aligned", aligned, "--adapter-stack", "continued", "--alpha", ALPHA, "-q"]
    run = expo("merge", *pair, "-o", tmp_path / "adapter", "--as-adapter")
    assert run.code == 0, run.stderr
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["use_rslora"] is False and set(written["rank_pattern"].values()) == {8}
    assert written["alpha_pattern"] == written["rank_pattern"]
    through_peft = strictly_merged(base_tensors, "llama", tmp_path / "adapter")
    assert_extrapolated({k: through_peft[k] for k in base_tensors}, sft_tensors, aligned_tensors)


def test_an_adapter_merge_carries_its_bases_loader_files(tmp_path, expo, bases):
    """An adapter folder holds no tokenizer or generation config: the merged model gets its base's, byte for byte."""
    base = shutil.copytree(bases["llama"], tmp_path / "base")
    add_tokenizer_files(base)
    adapter = make_adapter(tmp_path / "adapter", base, "llama", ADAPTERS["llama-all-linear-rslora"][1])
    assert not (adapter / "tokenizer.json").exists() and not (adapter / "generation_config.json").exists()
    run = expo("merge", "--aligned", adapter, "-o", tmp_path / "out", "--alpha", ALPHA, "-q")
    assert run.code == 0, run.stderr
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (base / name).read_bytes(), name
    assert AutoTokenizer.from_pretrained(tmp_path / "out")("w9")["input_ids"] == [1, 9]


def _model_from(tensors: dict[str, torch.Tensor]):
    model = build_model(llama_config(), 0)
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    return model


def test_two_adapters_whose_configs_do_not_tell_need_the_option(tmp_path, expo, bases):
    settings = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    first = make_adapter(tmp_path / "a1", bases["llama"], "llama", settings, seed=1, base_name="")
    second = make_adapter(tmp_path / "a2", bases["llama"], "llama", settings, seed=2, base_name="")
    args = ["merge", "--sft", first, "--aligned", second, "--base", bases["llama"], "-o", tmp_path / "o", "--alpha", 1]
    run = expo(*args)
    assert run.code == 2 and "pass --adapter-stack on-sft" in run.stderr
    assert expo(*args, "--adapter-stack", "continued", "-q").code == 0
    assert expo(*args[:-2], "-o", tmp_path / "o2", "--alpha", 1, "--adapter-stack", "sideways").code == 2


def test_inspect_dry_run_and_verify_take_adapters(tmp_path, expo, bases):
    adapter = make_adapter(tmp_path / "adapter", bases["llama"], "llama", ADAPTERS["llama-dora"][1])
    run = expo("inspect", "--aligned", adapter, "--alpha", "1", "--json", "-q")
    assert run.code == 0, run.stderr
    changed = {t["name"] for t in json.loads(run.stdout)["tensors"] if t["relative_change"] > 0}
    assert changed == {f"model.layers.{i}.self_attn.{m}.weight" for i in (0, 1) for m in ("q_proj", "o_proj")}
    run = expo("merge", "--aligned", adapter, "-o", tmp_path / "out", "--alpha", "1", "--dry-run", "--json")
    assert run.code == 0 and not (tmp_path / "out").exists()
    assert json.loads(run.stdout)["tensors"] == len(read_all(bases["llama"]))
    assert expo("merge", "--aligned", adapter, "-o", tmp_path / "out", "--alpha", "1", "-q").code == 0
    assert expo("verify", tmp_path / "out", "--aligned", adapter, "-q").code == 0


def _broken(tmp_path: Path, bases: dict[str, Path], how: str) -> Path:
    folder = make_adapter(
        tmp_path / how, bases["llama"], "llama", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    )
    config = json.loads((folder / "adapter_config.json").read_text())
    if how == "rank":
        config["r"] = 8
    elif how == "pissa":
        config["init_lora_weights"] = "pissa_niter_16"  # PEFT matches the init by prefix: fast PiSSA too
    elif how == "tokens":
        config["trainable_token_indices"] = [3, 4]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_bad_adapters_give_one_line_and_no_output(tmp_path, expo, bases):
    gpt2_adapter = make_adapter(
        tmp_path / "gpt2-adapter", bases["gpt2"], "gpt2", ADAPTERS["gpt2-conv1d-lora-bias-all-biases"][1]
    )
    ia3 = tmp_path / "ia3"
    get_peft_model(
        build_model(llama_config(), 0), IA3Config(target_modules=["q_proj"], feedforward_modules=[])
    ).save_pretrained(ia3)
    prompt = tmp_path / "prompt"
    get_peft_model(
        build_model(llama_config(), 0), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    ).save_pretrained(prompt)
    no_b = _broken(tmp_path, bases, "no-b")
    from safetensors.torch import load_file, save_file

    tensors = load_file(no_b / "adapter_model.safetensors")
    save_file({k: v for k, v in tensors.items() if "lora_B" not in k}, no_b / "adapter_model.safetensors")
    cases = [
        (gpt2_adapter, 4, "which --sft llama does not have"),
        (_broken(tmp_path, bases, "rank"), 4, "has rank 4 but its config (r, rank_pattern) says 8"),
        (ia3, 3, "is a PEFT IA3 adapter; expo reads LoRA adapters only"),
        (prompt, 3, "is a PEFT PROMPT_TUNING adapter"),
        (_broken(tmp_path, bases, "pissa"), 3, "rewrites the base weights"),
        (_broken(tmp_path, bases, "tokens"), 3, "trainable tokens"),
        (no_b, 3, "has no lora_B tensor"),
    ]
    for adapter, code, message in cases:
        run = expo("merge", "--sft", bases["llama"], "--aligned", adapter, "-o", tmp_path / "out", "--alpha", "1")
        assert run.code == code, (adapter.name, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert lines[-1].startswith("Error:") and message in lines[-1], (adapter.name, run.stderr)
        assert "Traceback" not in run.stderr
        assert not (tmp_path / "out").exists()


def test_a_hub_adapter_over_a_hub_base(tmp_path, expo, hub, bases, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "write-token")
    adapter = make_adapter(
        tmp_path / "adapter",
        bases["llama"],
        "llama",
        ADAPTERS["llama-all-linear-rslora"][1],
        base_name="org/tiny-base",
    )
    hub.create("org/tiny-base", files_of(bases["llama"]))
    hub.create("org/tiny-dpo-lora", files_of(adapter))
    run = expo("merge", "--aligned", "org/tiny-dpo-lora", "-o", tmp_path / "out", "--alpha", ALPHA, "-q")
    assert run.code == 0, run.stderr
    sft_tensors = read_all(bases["llama"])
    assert_extrapolated(read_all(tmp_path / "out"), sft_tensors, peft_merged(sft_tensors, "llama", adapter))
    record = json.loads((tmp_path / "out" / "config.json").read_text())["expo"]
    assert record["sft"]["repo_id"] == "org/tiny-base" and record["aligned"]["repo_id"] == "org/tiny-dpo-lora"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "- org/tiny-dpo-lora" in card and "- org/tiny-base" in card


def test_an_adapter_over_a_hub_base_is_validated_from_headers_before_any_download(tmp_path, expo, hub, bases, token):
    """The adapter, the base's headers and the α rules are all checked before a byte of the base is downloaded."""
    adapter = make_adapter(
        tmp_path / "adapter", bases["llama"], "llama", ADAPTERS["llama-all-linear-rslora"][1], base_name="org/base-h"
    )
    hub.create("org/base-h", files_of(bases["llama"]))
    hub.requests.clear()
    run = expo("merge", "--aligned", adapter, "-o", tmp_path / "out", "--alpha", ALPHA, "--alpha-for", "nothing=0")
    assert run.code == 2 and "--alpha-for nothing=0: matches no tensor" in run.stderr, run.stderr
    weight_gets = [r for m, p, r in hub.requests if m == "GET" and p.endswith(".safetensors")]
    assert weight_gets and all(r is not None and r.startswith("bytes=") for r in weight_gets)  # headers only
    assert not (tmp_path / "out").exists()


def test_tune_takes_an_adapter_and_its_candidates_are_the_merged_model(tmp_path, expo, bases):
    from transformers import AutoModelForCausalLM

    from expo_cli.merging.planning import prepare
    from expo_cli.options import MergeOptions
    from expo_cli.tuning.backends.candidates import CandidateModel
    from helpers import word_tokenizer

    adapter = make_adapter(tmp_path / "adapter", bases["llama"], "llama", ADAPTERS["llama-dora"][1])
    word_tokenizer().save_pretrained(adapter)  # as TRL saves it beside the adapter
    run = prepare(bases["llama"], adapter, {}, MergeOptions(progress=False))
    candidate = CandidateModel.attach(AutoModelForCausalLM.from_pretrained(bases["llama"]).eval(), run)
    candidate.set_alpha(0.7, MergeOptions())
    assert expo("merge", "--aligned", adapter, "-o", tmp_path / "out", "--alpha", "0.7", "-q").code == 0
    state = candidate.model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in read_all(tmp_path / "out").items())
    (tmp_path / "p.txt").write_text("w9 w10\nw11\n")
    (tmp_path / "g.py").write_text("def n(prompt, response):\n    return float(len(response.split()))\n")
    tuned = expo(
        "tune",
        "--aligned",
        adapter,
        "--prompts",
        tmp_path / "p.txt",
        "--reward-fn",
        f"{tmp_path / 'g.py'}:n",
        "--alpha",
        "1",
        "--max-new-tokens",
        "4",
        "--json",
        "-q",
    )
    assert tuned.code == 0, tuned.stderr
    assert [c["alpha"] for c in json.loads(tuned.stdout)["candidates"]] == [0.0, 1.0]


def test_a_bin_adapter_reads_like_a_safetensors_one(tmp_path, expo, bases):
    settings = ADAPTERS["llama-embed-patterns-modules-to-save"][1]
    adapter = make_adapter(tmp_path / "st", bases["llama"], "llama", settings)
    binary = tmp_path / "bin"
    binary.mkdir()
    from safetensors.torch import load_file

    torch.save(load_file(adapter / "adapter_model.safetensors"), binary / "adapter_model.bin")
    (binary / "adapter_config.json").write_bytes((adapter / "adapter_config.json").read_bytes())
    for name, folder in (("from-st", adapter), ("from-bin", binary)):
        assert expo("merge", "--aligned", folder, "-o", tmp_path / name, "--alpha", "0.4", "-q").code == 0
    assert (tmp_path / "from-st" / "model.safetensors").read_bytes() == (
        tmp_path / "from-bin" / "model.safetensors"
    ).read_bytes()


def test_an_untrained_adapter_changes_nothing_and_is_refused_unless_forced(tmp_path, expo, bases):
    fresh = tmp_path / "fresh"  # PEFT starts lora_B at zero: θ_aligned = θ_sft
    get_peft_model(
        build_model(llama_config(), 0), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"])
    ).save_pretrained(fresh)
    args = ["merge", "--sft", bases["llama"], "--aligned", fresh, "-o", tmp_path / "out", "--alpha", "1"]
    run = expo(*args)
    assert run.code == 4 and "identical" in run.stderr and not (tmp_path / "out").exists()
    assert expo(*args, "--force", "-q").code == 0
    base = read_all(bases["llama"])
    assert all(torch.equal(t, base[n]) for n, t in read_all(tmp_path / "out").items())


def test_dora_on_a_conv1d_layer_is_refused(tmp_path, expo, bases):
    settings = {"r": 2, "lora_alpha": 4, "target_modules": ["c_fc"], "use_dora": True}
    adapter = make_adapter(tmp_path / "dora", bases["gpt2"], "gpt2", settings)
    run = expo("merge", "--sft", bases["gpt2"], "--aligned", adapter, "-o", tmp_path / "out", "--alpha", "1")
    assert run.code == 3 and "DoRA on 'transformer.h.0.mlp.c_fc.weight'" in run.stderr
    assert not (tmp_path / "out").exists()


def test_an_adapter_saved_without_the_peft_prefix(tmp_path, expo, bases):
    """transformers' own adapter integration saves the keys without `base_model.model.`: read alike."""
    from safetensors.torch import load_file, save_file

    settings = ADAPTERS["llama-embed-patterns-modules-to-save"][1]
    adapter = make_adapter(tmp_path / "peft", bases["llama"], "llama", settings)
    bare = tmp_path / "bare"
    bare.mkdir()
    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file({k.removeprefix("base_model.model."): v for k, v in tensors.items()}, bare / "adapter_model.safetensors")
    (bare / "adapter_config.json").write_bytes((adapter / "adapter_config.json").read_bytes())
    for name, folder in (("from-peft", adapter), ("from-bare", bare)):
        assert expo("merge", "--aligned", folder, "-o", tmp_path / name, "--alpha", "0.4", "-q").code == 0
    assert (tmp_path / "from-peft" / "model.safetensors").read_bytes() == (
        tmp_path / "from-bare" / "model.safetensors"
    ).read_bytes()
    assert expo("merge", "--aligned", bare, "-o", tmp_path / "as-adapter", "--alpha", "0.4", "--as-adapter").code == 0
    written = load_file(tmp_path / "as-adapter" / "adapter_model.safetensors")
    assert set(written) == {k.removeprefix("base_model.model.") for k in tensors}


REFUSED_VALUES = {"init_lora_weights": "lora_ga", "alora_invocation_tokens": [5, 6], "layer_replication": [[0, 1]]}


@pytest.mark.parametrize("feature", [f for f in FEATURES if not f.supported], ids=lambda f: f.key)
def test_every_feature_peft_merges_otherwise_is_refused_by_name_before_any_work(tmp_path, expo, bases, feature):
    adapter = make_adapter(
        tmp_path / "a", bases["llama"], "llama", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    )
    config = json.loads((adapter / "adapter_config.json").read_text())
    config[feature.key] = REFUSED_VALUES.get(feature.key, {"enabled": 1} if feature.key.endswith("_config") else True)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    run = expo("merge", "--sft", bases["llama"], "--aligned", adapter, "-o", tmp_path / "out", "--alpha", "1")
    assert run.code == 3, run.stderr
    (line,) = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert f"{feature.name} ({feature.key}" in line and feature.why in line and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_the_readme_lists_what_is_supported_and_refused_from_the_same_table():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start, end = "<!-- lora-features: generated from expo_cli.inputs.lora_features -->\n", "\n<!-- /lora-features -->"
    assert readme[readme.index(start) + len(start) : readme.index(end)] == markdown()


def test_patterns_are_read_as_the_peft_version_that_saved_the_adapter(tmp_path, expo, bases):
    """A key naming layer 0's q_proj from its first character matches from PEFT 0.15 on (rank 2 in the file) but not
    in 0.14 (`.*\\.key$`); without peft_version the readings differ and the adapter is refused."""
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    adapter = make_adapter(
        tmp_path / "a", bases["llama"], "llama", {**settings, "rank_pattern": {"model.layers.0.self_attn.q_proj": 2}}
    )
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_version"].startswith("0.")
    merged = expo(
        "merge", "--sft", bases["llama"], "--aligned", adapter, "-o", tmp_path / "out", "--alpha", ALPHA, "-q"
    )
    assert merged.code == 0, merged.stderr
    sft = read_all(bases["llama"])
    assert_extrapolated(read_all(tmp_path / "out"), sft, peft_merged(sft, "llama", adapter))
    for version, code, message in ((None, 3, "no peft_version"), ("0.14.0", 4, "has rank 2 but its config")):
        config.pop("peft_version", None)
        if version:
            config["peft_version"] = version
        (adapter / "adapter_config.json").write_text(json.dumps(config))
        out = tmp_path / f"out-{version or 'none'}"
        run = expo("merge", "--sft", bases["llama"], "--aligned", adapter, "-o", out, "--alpha", "1")
        assert run.code == code and message in run.stderr.splitlines()[-1], run.stderr
        if version is None:
            assert "'model.layers.0.self_attn.q_proj'" in run.stderr and "PEFT 0.14: r=4" in run.stderr


def test_up_to_peft_0_13_one_key_chose_both_the_rank_and_the_alpha(tmp_path, expo, bases):
    """rank_pattern {q_proj: 4} and alpha_pattern {self_attn.q_proj: 5}: PEFT ≤ 0.13 picks the key q_proj for both
    (the rank keys come first), so the alpha stays lora_alpha = 8; from 0.15 the alpha is 5."""
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "rank_pattern": {"q_proj": 4}}
    adapter = make_adapter(
        tmp_path / "a", bases["llama"], "llama", {**settings, "alpha_pattern": {"self_attn.q_proj": 5}}
    )
    sft = read_all(bases["llama"])
    factors = load_file(adapter / "adapter_model.safetensors")
    for version, alpha in (("0.13.2", 8), ("0.21.2", 5)):
        config = json.loads((adapter / "adapter_config.json").read_text())
        config["peft_version"] = version
        (adapter / "adapter_config.json").write_text(json.dumps(config))
        out = tmp_path / f"out-{version}"
        assert (
            expo("merge", "--sft", bases["llama"], "--aligned", adapter, "-o", out, "--alpha", ALPHA, "-q").code == 0
        )
        aligned = dict(sft)
        for key, a in factors.items():
            if key.endswith("lora_A.weight"):
                name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight") + ".weight"
                b = factors[key.replace("lora_A", "lora_B")]
                aligned[name] = sft[name].double() + alpha / 4 * (b.double() @ a.double())
        assert_extrapolated(read_all(out), sft, aligned)


def test_a_square_conv1d_layer_is_oriented_by_the_architecture_not_the_saved_flag(tmp_path, expo, bases):
    """GPT-2's attn.c_proj is a square Conv1D: its shape cannot tell the orientation, and PEFT saves the
    fan_in_fan_out of the last layer it created (False after any nn.Linear), yet merges Conv1D transposed."""
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["attn.c_proj"]}
    adapter = make_adapter(tmp_path / "a", bases["gpt2"], "gpt2", settings)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "fan_in_fan_out": False}))
    sft = read_all(bases["gpt2"])
    square = [k for k in sft if k.endswith("attn.c_proj.weight")]
    assert square and all(sft[k].shape[0] == sft[k].shape[1] for k in square)
    assert (
        expo(
            "merge", "--sft", bases["gpt2"], "--aligned", adapter, "-o", tmp_path / "out", "--alpha", ALPHA, "-q"
        ).code
        == 0
    )
    assert_extrapolated(read_all(tmp_path / "out"), sft, peft_merged(sft, "gpt2", adapter))


def strictly_merged(base: dict[str, torch.Tensor], arch: str, adapter: Path) -> dict[str, torch.Tensor]:
    """PEFT's float64 merge of an adapter that must load whole: no missing or unexpected keys, nothing dropped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = peft_merged(base, arch, adapter)
    complaints = [
        str(w.message) for w in caught if re.search(r"missing|unexpected|not found|drop", str(w.message), re.I)
    ]
    assert not complaints, complaints
    return merged


def test_a_combined_continued_stack_names_exactly_the_modules_it_holds(tmp_path, expo, bases):
    """The SFT adapter covers q_proj in every layer; the continued DPO adapter's config says layers_to_transform
    [1] and lora_bias. The combined --as-adapter output must make PEFT create every module it holds (with a zero
    LoRA bias where only one side had one) and give PEFT's float64 merge of the pair."""
    base = bases["llama"]
    sft_adapter = make_adapter(
        tmp_path / "sft-adapter", base, "llama", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}, seed=31
    )
    dpo = {
        "r": 2,
        "lora_alpha": 4,
        "target_modules": ["q_proj"],
        "layers_to_transform": [1],
        "layers_pattern": "layers",
    }
    aligned = make_adapter(tmp_path / "dpo", base, "llama", dpo, seed=32)
    base_tensors = read_all(base)
    sft_tensors, aligned_tensors = (peft_merged(base_tensors, "llama", a) for a in (sft_adapter, aligned))
    pair = ["--sft", sft_adapter, "--aligned", aligned, "--adapter-stack", "continued", "--alpha", ALPHA, "-q"]
    run = expo("merge", *pair, "-o", tmp_path / "adapter", "--as-adapter")
    assert run.code == 0, run.stderr
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["layers_to_transform"] is None and written["target_modules"] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
    ]
    through_peft = strictly_merged(base_tensors, "llama", tmp_path / "adapter")
    assert_extrapolated({k: through_peft[k] for k in base_tensors}, sft_tensors, aligned_tensors)


def test_a_lora_bias_on_a_layer_without_bias_is_refused_for_a_combined_adapter(tmp_path, expo):
    """Llama with attention biases: the DPO adapter's lora_bias on q_proj (which has a bias) would give the SFT
    adapter's down_proj (which has none) a LoRA bias too in one combined config, and PEFT's merge would raise."""
    base = save(build_model(llama_config(attention_bias=True), 0), tmp_path / "base", torch.float32)
    assert "model.layers.0.self_attn.q_proj.bias" in read_all(base)
    sft_adapter = make_adapter(
        tmp_path / "s", base, "llama", {"r": 4, "lora_alpha": 8, "target_modules": ["down_proj"]}, seed=33
    )
    aligned = make_adapter(
        tmp_path / "a", base, "llama", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}, seed=34
    )
    tensors = load_file(aligned / "adapter_model.safetensors")
    biases = {
        k.replace(".weight", ".bias"): torch.ones(v.shape[0])
        for k, v in tensors.items()
        if k.endswith("lora_B.weight")
    }
    from safetensors.torch import save_file

    save_file({**tensors, **biases}, aligned / "adapter_model.safetensors")
    config = json.loads((aligned / "adapter_config.json").read_text())
    (aligned / "adapter_config.json").write_text(json.dumps({**config, "lora_bias": True}))
    pair = ["--sft", sft_adapter, "--aligned", aligned, "--adapter-stack", "continued", "--alpha", ALPHA]
    assert expo("merge", *pair, "-o", tmp_path / "merged", "-q").code == 0  # a merged output is exact
    run = expo("merge", *pair, "-o", tmp_path / "adapter", "--as-adapter")
    assert run.code == 2 and "has no bias to merge it into; drop --as-adapter" in run.stderr.splitlines()[-1], (
        run.stderr
    )
    assert not (tmp_path / "adapter").exists()


@pytest.fixture(scope="module")
def tied_base(tmp_path_factory):
    """A Llama whose head is its input embedding (the checkpoint stores one tensor for both)."""
    folder = save(
        build_model(llama_config(tie_word_embeddings=True), 0), tmp_path_factory.mktemp("tied"), torch.float32
    )
    assert "lm_head.weight" not in read_all(folder)
    return folder


def tied_adapter(folder: Path, base: Path, settings: dict) -> Path:
    model = build_model(llama_config(tie_word_embeddings=True), 0)
    model.load_state_dict(read_all(base), strict=False)
    model.tie_weights()
    randomize(get_peft_model(model, LoraConfig(**settings)), 7).save_pretrained(folder)
    return folder


def tied_merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    model = build_model(llama_config(tie_word_embeddings=True), 0).double()
    model.load_state_dict({k: v.double() for k, v in read_all(base).items()}, strict=False)
    model.tie_weights()
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()  # still one parameter
    return {k: v for k, v in merged.state_dict().items() if k != "lm_head.weight"}


def test_a_lora_on_a_tied_head_changes_the_one_shared_parameter_as_peft_merges_it(tmp_path, expo, tied_base):
    adapter = tied_adapter(
        tmp_path / "a", tied_base, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "lm_head"]}
    )
    assert (
        expo("merge", "--sft", tied_base, "--aligned", adapter, "-o", tmp_path / "out", "--alpha", ALPHA, "-q").code
        == 0
    )
    out, sft = read_all(tmp_path / "out"), read_all(tied_base)
    assert "lm_head.weight" not in out
    assert_extrapolated(out, sft, tied_merged(tied_base, adapter))
    assert not torch.equal(out["model.embed_tokens.weight"], sft["model.embed_tokens.weight"])


def test_a_tied_checkpoint_storing_its_head_twice_gets_both_copies_updated(tmp_path, expo, tied_base):
    """Some checkpoints store lm_head.weight beside the embedding though the config ties them: transformers discards
    the copy when it ties them again, so the update must land in the embedding (and the copy kept equal)."""
    base = shutil.copytree(tied_base, tmp_path / "base")
    tensors = read_all(base)
    from safetensors.torch import save_file

    save_file(
        {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"].clone()},
        base / "model.safetensors",
        metadata={"format": "pt"},
    )
    adapter = tied_adapter(tmp_path / "a", tied_base, {"r": 4, "lora_alpha": 8, "target_modules": ["lm_head"]})
    assert expo("merge", "--sft", base, "--aligned", adapter, "-o", tmp_path / "out", "--alpha", ALPHA, "-q").code == 0
    out = read_all(tmp_path / "out")
    assert torch.equal(out["lm_head.weight"], out["model.embed_tokens.weight"])
    reference = tied_merged(tied_base, adapter)
    assert_extrapolated({k: v for k, v in out.items() if k != "lm_head.weight"}, read_all(tied_base), reference)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}, "modules_to_save (or ensure_weight_tying)"),
        # PEFT matches a short name as a suffix: `embed_tokens` is `model.embed_tokens`, the tied embedding
        ({"target_modules": ["q_proj"], "modules_to_save": ["embed_tokens"]}, "modules_to_save (or ensure_weight"),
        ({"target_modules": ["embed_tokens", "lm_head"]}, "LoRA on both the head 'lm_head.weight' and the embedding"),
    ],
)
def test_what_peft_does_not_merge_into_the_tied_parameter_is_refused(tmp_path, expo, tied_base, settings, message):
    adapter = tied_adapter(tmp_path / "a", tied_base, {"r": 4, "lora_alpha": 8, **settings})
    run = expo("merge", "--sft", tied_base, "--aligned", adapter, "-o", tmp_path / "out", "--alpha", "1")
    assert run.code == 3 and message in run.stderr.splitlines()[-1], run.stderr
    assert not (tmp_path / "out").exists()


def _edit_factors(adapter: Path, edit) -> None:
    from safetensors.torch import save_file

    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file({k: edit(k, v) for k, v in tensors.items()}, adapter / "adapter_model.safetensors")


def test_two_adapters_on_the_same_base_are_told_apart_by_their_factors(tmp_path, expo, bases):
    """Both configs name the same base. TRL's route (merge the SFT adapter, train a fresh DPO adapter on the merged
    model, whose name merge_and_unload keeps) must stack the DPO adapter on the merged SFT model; a DPO adapter that
    continued the SFT adapter's factors stands on the base alone. Evidence that fits neither is refused."""
    base = bases["llama"]
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    sft_adapter = make_adapter(tmp_path / "sft-adapter", base, "llama", lora, seed=41)
    base_tensors = read_all(base)
    sft_tensors = peft_merged(base_tensors, "llama", sft_adapter)
    # TRL's route: load the base, merge the SFT adapter into it (merge_and_unload keeps the model's name), train a
    # fresh adapter (a new random A) on the merged model: get_peft_model records the same base name
    from transformers import AutoModelForCausalLM

    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), sft_adapter).merge_and_unload()
    torch.manual_seed(1234)
    randomize(get_peft_model(merged, LoraConfig(**lora)), 42).save_pretrained(tmp_path / "fresh")
    recorded = json.loads((tmp_path / "fresh" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == json.loads((sft_adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    # continued: the SFT adapter's factors, trained further
    continued = shutil.copytree(sft_adapter, tmp_path / "continued")
    noise = torch.Generator().manual_seed(43)
    _edit_factors(continued, lambda k, v: v + 0.02 * torch.randn(v.shape, generator=noise))
    cases = {
        "fresh": (sft_tensors, tmp_path / "fresh"),  # on the merged SFT model
        "continued": (base_tensors, continued),  # on the base
    }
    for name, (under, aligned) in cases.items():
        out = tmp_path / f"out-{name}"
        run = expo("merge", "--sft", sft_adapter, "--aligned", aligned, "-o", out, "--alpha", ALPHA, "-q")
        assert run.code == 0, (name, run.stderr)
        assert_extrapolated(read_all(out), sft_tensors, peft_merged(under, "llama", aligned))
    mixed = shutil.copytree(tmp_path / "fresh", tmp_path / "mixed")  # A halfway between the two: no evidence
    first = load_file(sft_adapter / "adapter_model.safetensors")
    _edit_factors(mixed, lambda k, v: v + first[k] if "lora_A" in k else v)
    run = expo("merge", "--sft", sft_adapter, "--aligned", mixed, "-o", tmp_path / "out-mixed", "--alpha", "1")
    assert run.code == 2 and "name the same base and their lora_A rows have mean |cos|" in run.stderr.splitlines()[-1]
    assert "--adapter-stack continued" in run.stderr and not (tmp_path / "out-mixed").exists()


def test_a_modules_to_save_key_with_its_adapter_name_reads_as_peft_loads_it(tmp_path, expo, bases):
    """Some tools save `…lm_head.modules_to_save.default.weight` (and the `original_module` copy); PEFT's
    non-strict load takes the former as the trained head."""
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}
    plain = make_adapter(tmp_path / "plain", bases["llama"], "llama", settings)
    named = shutil.copytree(plain, tmp_path / "named")
    tensors = load_file(named / "adapter_model.safetensors")
    head = "base_model.model.lm_head.weight"
    renamed = {k: v for k, v in tensors.items() if k != head}
    renamed["base_model.model.lm_head.modules_to_save.default.weight"] = tensors[head]
    renamed["base_model.model.lm_head.original_module.weight"] = read_all(bases["llama"])["lm_head.weight"]
    from safetensors.torch import save_file

    save_file(renamed, named / "adapter_model.safetensors")
    for adapter in (plain, named):
        out = tmp_path / f"out-{adapter.name}"
        assert (
            expo("merge", "--sft", bases["llama"], "--aligned", adapter, "-o", out, "--alpha", ALPHA, "-q").code == 0
        )
    assert (
        files_of(tmp_path / "out-plain")["model.safetensors"] == files_of(tmp_path / "out-named")["model.safetensors"]
    )


def test_what_expo_cannot_read_is_named_for_what_it_is(tmp_path, expo, bases):
    base = bases["llama"]
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    quantized = shutil.copytree(base, tmp_path / "base-bnb-4bit")
    settings = json.loads((quantized / "config.json").read_text())
    settings["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(settings))
    qlora = make_adapter(tmp_path / "qlora", base, "llama", lora, base_name=str(quantized))
    dora = make_adapter(tmp_path / "dora", base, "llama", {**lora, "use_dora": True})
    _edit_keys(dora, lambda k: "lora_magnitude_vector" not in k or "layers.0." not in k)
    mlx = tmp_path / "mlx"
    mlx.mkdir()
    (mlx / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora", "lora_parameters": {"rank": 8}}))
    shutil.copy(qlora / "adapter_model.safetensors", mlx / "adapter_model.safetensors")
    conv = make_adapter(tmp_path / "conv", base, "llama", lora)
    from safetensors.torch import save_file

    factors = load_file(conv / "adapter_model.safetensors")
    save_file({k: v[..., None, None] for k, v in factors.items()}, conv / "adapter_model.safetensors")
    cases = [
        (["--aligned", qlora], 3, "is quantized (bitsandbytes)"),
        (["--sft", base, "--aligned", dora], 3, "has no lora_magnitude_vector (PEFT would start it from the base"),
        (["--sft", base, "--aligned", mlx], 3, "is an MLX LoRA adapter (mlx_lm), not a PEFT one"),
        (["--sft", base, "--aligned", conv], 3, "is a convolution (LoRA factors"),
    ]
    for args, code, message in cases:
        run = expo("merge", *args, "-o", tmp_path / "out", "--alpha", "1")
        assert run.code == code and message in run.stderr.splitlines()[-1], (args, run.stderr)
        if args[1] == qlora:
            assert run.stderr.strip().endswith("pass --sft (or --base) <the unquantized base>")
        assert not (tmp_path / "out").exists()


def _edit_keys(adapter: Path, keep) -> None:
    from safetensors.torch import save_file

    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v for k, v in tensors.items() if keep(k)}, adapter / "adapter_model.safetensors")


def test_an_adapter_saved_with_ensure_weight_tying_on_a_tied_head_is_refused(tmp_path, expo, tied_base):
    adapter = tied_adapter(tmp_path / "a", tied_base, {"r": 4, "lora_alpha": 8, "target_modules": ["lm_head"]})
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "ensure_weight_tying": True}))
    run = expo("merge", "--sft", tied_base, "--aligned", adapter, "-o", tmp_path / "out", "--alpha", "1")
    assert run.code == 3 and "modules_to_save (or ensure_weight_tying) on the tied embeddings" in run.stderr
    assert not (tmp_path / "out").exists()


def test_the_pattern_rule_follows_the_saving_peft_version_and_never_goes_back():
    """0.13 and earlier, 0.14, then 0.15 and every later version (1.x included) read patterns their own way."""
    from hypothesis import given
    from hypothesis import strategies as st

    from expo_cli.inputs.lora_patterns import RULES, rule_of

    cases = {"0.9.0": "0.13", "0.13.2": "0.13", "0.14.0": "0.14", "0.15.1": "0.15", "0.17.0": "0.15"}
    cases |= {"1.0.0": "0.15", "1.2.3": "0.15", "2.14.0": "0.15", "1.14": "0.15"}
    for version, rule in cases.items():
        assert rule_of({"peft_version": version}) == rule, version
    assert rule_of({}) is None and rule_of({"peft_version": "main"}) is None

    @given(st.tuples(st.integers(0, 3), st.integers(0, 30)), st.tuples(st.integers(0, 3), st.integers(0, 30)))
    def monotone(one, two):
        low, high = sorted([one, two])
        rules = [rule_of({"peft_version": f"{v[0]}.{v[1]}.0"}) for v in (low, high)]
        assert RULES.index(rules[0]) <= RULES.index(rules[1])

    monotone()


def test_a_pattern_key_with_alternatives_matches_only_whole_module_names():
    """PEFT 0.15+ matches `(.*\\.)?(KEY)$`: the alternatives of a key are grouped, so `q_proj|v_proj` does not
    match a module whose name merely starts with one of them."""
    from expo_cli.inputs.lora_patterns import rank_and_alpha

    config = {"r": 4, "lora_alpha": 8, "rank_pattern": {"q_proj|v_proj": 16}, "alpha_pattern": {}}
    assert rank_and_alpha(config, "model.layers.0.self_attn.v_proj", "0.15") == (16, 8)
    assert rank_and_alpha(config, "model.layers.0.self_attn.q_proj", "0.15") == (16, 8)
    assert rank_and_alpha(config, "model.layers.0.self_attn.q_proj_extra", "0.15") == (4, 8)
    assert rank_and_alpha(config, "model.layers.0.mlp.up_proj", "0.15") == (4, 8)
