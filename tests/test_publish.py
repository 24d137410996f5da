"""An output you can publish: the right side files, a card that carries the aligned model's metadata, no private
paths, no silent no-ops, and help and messages that read right. Folders are laid out as they really look after
training and download, and the outputs are loaded back by transformers, peft and llama.cpp's gguf metadata reader.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, snapshot_download
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlavaConfig

from expo_cli.merging.card import pipeline_tag
from helpers import assert_correct, make_pair, read_all, snapshot


@pytest.fixture
def pair(tmp_path, llama_pair):
    """A private copy of the Llama pair that a test may lay out as it likes."""
    return tuple(shutil.copytree(p, tmp_path / p.name) for p in llama_pair)


def merge(expo, sft, aligned, out, *extra, code=0, alpha="0.5"):
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", out, "--alpha", alpha, *extra)
    assert run.code == code, run.stderr
    return run


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def expo_block(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())["expo"]


# 1. A stale adapter next to a full model.
def test_stale_adapter_files_are_not_copied_and_the_output_loads_with_peft_installed(tmp_path, expo, pair):
    import peft  # noqa: F401 - transformers looks for adapter_config.json only when peft is importable

    sft, aligned = pair
    (aligned / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "x"}))
    save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(2, 32)}, aligned / "adapter_model.safetensors")
    out = tmp_path / "out"
    run = merge(expo, sft, aligned, out)
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert "adapter_config.json (PEFT adapter files" in run.stderr
    model = AutoModelForCausalLM.from_pretrained(out)  # raised FileNotFoundError with the stale adapter_config.json
    assert torch.equal(model.lm_head.weight, read_all(out)["lm_head.weight"].to(model.lm_head.weight.dtype))


# 2. A Trainer output folder.
def trainer_output(aligned: Path) -> None:
    step = aligned / "checkpoint-500"
    step.mkdir()
    shutil.copy(aligned / "config.json", step / "config.json")
    shutil.copy(aligned / "generation_config.json", step / "generation_config.json")
    (step / "trainer_state.json").write_text("{}")
    events = aligned / "runs" / "Nov27_03-00-00_gpu-node-17"
    events.mkdir(parents=True)
    (events / "events.out.tfevents.1700000000.gpu-node-17.4242.0").write_bytes(b"\0log")
    for name in ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (aligned / name).write_bytes(b"\0state")
    (aligned / "trainer_state.json").write_text("{}")
    (aligned / "all_results.json").write_text("{}")
    (aligned / "notes.txt").write_text("my experiment notes")


def test_training_leftovers_are_skipped_listed_and_recorded(tmp_path, expo, pair):
    sft, aligned = pair
    trainer_output(aligned)
    out = tmp_path / "out"
    run = merge(expo, sft, aligned, out)
    assert files(out) == [
        "README.md",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    line = next(li for li in run.stderr.splitlines() if li.startswith("Not copied from the aligned folder"))
    for shown in (
        "checkpoint-500/ (training checkpoint",
        "runs/ (training logs",
        "optimizer.pt (training state",
        "notes.txt (not needed to load the model)",
        "modeling_custom.py",
    ):
        assert shown in line, shown
    skipped = expo_block(out)["side_files"]["skipped"]
    assert skipped["checkpoint-500/"].endswith("3 files") and skipped["runs/"].startswith("training logs")
    assert "gpu-node-17" not in json.dumps(expo_block(out))  # TensorBoard's file names carry the host name
    card = (out / "README.md").read_text()
    assert "`checkpoint-500/`: training checkpoint" in card
    plan = json.loads(
        expo(
            "merge",
            "--sft",
            sft,
            "--aligned",
            aligned,
            "-o",
            tmp_path / "dry",
            "--alpha",
            "0.5",
            "--dry-run",
            "--json",
        ).stdout
    )
    assert plan["skipped_files"] == skipped and "tokenizer_config.json" in plan["copied_files"]


def test_copy_and_skip_override_the_policy(tmp_path, expo, pair):
    sft, aligned = pair
    trainer_output(aligned)
    out = tmp_path / "out"
    merge(expo, sft, aligned, out, "--copy", "notes.txt", "--copy", "trainer_state.json", "--skip", "*.jinja")
    assert (out / "notes.txt").read_bytes() == (aligned / "notes.txt").read_bytes()
    assert (out / "trainer_state.json").exists() and not (out / "chat_template.jinja").exists()
    assert expo_block(out)["side_files"]["skipped"]["chat_template.jinja"] == "left out by --skip"
    run = merge(expo, sft, aligned, tmp_path / "o2", "--copy", "nothing-*", code=2)
    assert "--copy 'nothing-*': matches no file" in run.stderr
    run = merge(expo, sft, aligned, tmp_path / "o3", "--copy", "*.safetensors", code=2)
    assert "is a weight file; the output never carries un-extrapolated weights" in run.stderr
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_custom_code_named_by_auto_map_travels_with_its_relative_imports(tmp_path, expo, pair):
    sft, aligned = pair
    config = json.loads((aligned / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_tiny.TinyConfig", "AutoModel": "other/repo--modeling_x.X"}
    (aligned / "config.json").write_text(json.dumps(config))
    (aligned / "configuration_tiny.py").write_text("from .tiny_utils import helper\nfrom . import unrelated\n")
    (aligned / "tiny_utils.py").write_text("def helper():\n    return 1\n")
    (aligned / "train.py").write_text("# a training script\n")
    out = tmp_path / "out"
    merge(expo, sft, aligned, out)
    for name in ("configuration_tiny.py", "tiny_utils.py"):
        assert (out / name).read_bytes() == (aligned / name).read_bytes()
    assert not (out / "train.py").exists() and not (out / "modeling_custom.py").exists()


# 3. Format files without their weights.
def mistral_layout(folder: Path, seed: int) -> dict[str, torch.Tensor]:
    """Mistral-format weights beside the HF shards: the same model under consolidated names."""
    hf = read_all(folder)
    names = {
        "model.embed_tokens.weight": "tok_embeddings.weight",
        "lm_head.weight": "output.weight",
        "model.norm.weight": "norm.weight",
    }
    consolidated = {names.get(k, k.removeprefix("model.")): v.clone() for k, v in hf.items()}
    save_file(consolidated, folder / "consolidated.safetensors", metadata={"format": "pt"})
    (folder / "params.json").write_text(json.dumps({"dim": 32, "n_layers": 2, "seed": seed}))
    (folder / "tokenizer.model.v3").write_bytes(b"\0tokenizer")
    return consolidated


def test_mistral_format_is_skipped_and_said_or_extrapolated_with_the_flag(tmp_path, expo, pair):
    sft, aligned = pair
    sft_cons, aligned_cons = mistral_layout(sft, 0), mistral_layout(aligned, 1)
    out = tmp_path / "out"
    run = merge(expo, sft, aligned, out)
    assert not (out / "params.json").exists() and not (out / "consolidated.safetensors").exists()
    assert "params.json (Mistral-format files" in run.stderr
    assert "`consolidated.safetensors`: Mistral-format files" in (out / "README.md").read_text()
    assert (out / "tokenizer.model.v3").exists()  # a tokenizer of the same vocabulary: harmless, and vLLM's

    both = tmp_path / "both"
    merge(expo, sft, aligned, both, "--mistral-format")
    assert (both / "params.json").read_bytes() == (aligned / "params.json").read_bytes()
    merged = load_file(both / "consolidated.safetensors")
    assert sorted(merged) == sorted(aligned_cons)
    for name, tensor in merged.items():
        assert_correct(tensor, sft_cons[name], aligned_cons[name], 0.5, name)
    hf = read_all(both)
    assert torch.equal(merged["output.weight"], hf["lm_head.weight"])  # the two formats hold the same model
    record = expo_block(both)
    assert record["mistral_format"] and "consolidated.safetensors" in record["shards"]
    assert "--mistral-format" in (both / "README.md").read_text()
    check = expo("verify", both, "--sft", sft, "--aligned", aligned)
    assert check.code == 0, check.stderr


def test_mistral_format_needs_both_sides_and_no_rules(tmp_path, expo, pair):
    sft, aligned = pair
    mistral_layout(aligned, 1)
    run = merge(expo, sft, aligned, tmp_path / "o", "--mistral-format", code=3)
    assert "no consolidated*.safetensors; --mistral-format needs them on both sides" in run.stderr
    mistral_layout(sft, 0)
    run = merge(expo, sft, aligned, tmp_path / "o", "--mistral-format", "--alpha-for", "norm=0", code=2)
    assert "--mistral-format cannot take per-tensor α rules" in run.stderr
    assert not (tmp_path / "o").exists()


def test_llama3_original_folder_is_skipped_as_a_whole(tmp_path, expo, pair):
    sft, aligned = pair
    original = aligned / "original"
    original.mkdir()
    (original / "params.json").write_text("{}")
    (original / "tokenizer.model").write_bytes(b"\0tok")
    torch.save({"w": torch.zeros(2)}, original / "consolidated.00.pth")
    out = tmp_path / "out"
    run = merge(expo, sft, aligned, out)
    assert not (out / "original").exists()
    assert "original/ (original-format files" in run.stderr
    assert expo_block(out)["side_files"]["skipped"]["original/"].endswith("3 files")


# 4. Private paths.
def test_no_local_path_or_user_name_in_anything_pushed(tmp_path, expo, hub, pair, monkeypatch):
    from hub_server import WRITE_TOKEN

    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    sft, aligned = pair
    out = tmp_path / "out"
    merge(expo, sft, aligned, out, "--push-to-hub", "me/private-paths")
    back = Path(snapshot_download("me/private-paths", cache_dir=tmp_path / "cache"))
    private = {str(tmp_path), str(Path.home()), str(sft.resolve().parent)}
    user = getpass.getuser()
    for name in files(back):
        text = (back / name).read_bytes().decode("utf-8", errors="replace")
        for secret in private:
            assert secret not in text, (name, secret)
        if name in ("config.json", "README.md"):
            assert f"/{user}/" not in text and "pytest-of" not in text, name
    record = expo_block(back)
    assert record["sft"] == {"name": "sft", "layout_sha256": record["sft"]["layout_sha256"]}
    assert len(record["aligned"]["layout_sha256"]) == 64


def test_hub_ids_of_local_folders_name_the_base_models(tmp_path, expo, pair):
    sft, aligned = pair
    out = tmp_path / "out"
    merge(expo, sft, aligned, out, "--sft-id", "org/tiny-sft", "--aligned-id", "org/tiny-dpo@v2")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == ["org/tiny-dpo", "org/tiny-sft"] and card.data.base_model_relation == "merge"
    assert expo_block(out)["aligned"]["repo_id"] == "org/tiny-dpo" and expo_block(out)["aligned"]["revision"] == "v2"
    assert "expo merge --sft org/tiny-sft --aligned org/tiny-dpo@v2" in card.text
    run = merge(expo, sft, aligned, tmp_path / "o2", "--sft-id", "not a repo", code=2)
    assert "--sft-id 'not a repo'" in run.stderr


def test_the_cards_command_makes_the_same_output_again(tmp_path, expo, pair):
    """The card's `expo merge` line carries every setting that changes the bytes: --dtype and per-tensor rules."""
    import shlex

    sft, aligned = pair
    out = tmp_path / "out"
    merge(expo, sft, aligned, out, "--sft-id", "org/s", "--aligned-id", "org/a", "--dtype", "float32",
          "--alpha-for", "mlp=0.25", alpha="0.7")  # fmt: skip
    line = next(line for line in (out / "README.md").read_text().splitlines() if "expo merge --sft" in line)
    command = shlex.split(line[line.index("expo merge") :].rstrip("`"))
    assert command[command.index("--dtype") + 1] == "float32" and command[command.index("--alpha") + 1] == "0.7"
    assert command[command.index("--alpha-for") + 1] == "mlp=0.25"


# 5. The card.
ALIGNED_CARD = """---
license: apache-2.0
language:
- en
- fr
datasets:
- HuggingFaceH4/ultrafeedback_binarized
model_name: tiny-zephyr
tags:
- dpo
- alignment-handbook
pipeline_tag: text-generation
base_model: org/tiny-sft
model-index:
- name: tiny-zephyr
  results: []
---

# tiny-zephyr

A DPO model trained on UltraFeedback. It likes short answers.
"""


def test_card_keeps_the_aligned_metadata_and_text_and_llama_cpp_reads_it(tmp_path, expo, pair):
    from gguf.metadata import Metadata

    sft, aligned = pair
    (aligned / "README.md").write_text(ALIGNED_CARD)
    out = tmp_path / "out"
    merge(expo, sft, aligned, out, "--aligned-id", "org/tiny-zephyr", "--alpha-for", "norm=0", "--dtype", "float32")
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["language"] == ["en", "fr"]
    assert data["datasets"] == ["HuggingFaceH4/ultrafeedback_binarized"]
    assert data["model_name"] == "tiny-zephyr-expo" and data["pipeline_tag"] == "text-generation"
    assert data["library_name"] == "transformers"
    assert data["tags"] == ["dpo", "alignment-handbook", "expo", "merge", "model-extrapolation"]
    assert data["base_model"] == ["org/tiny-zephyr"] and data["base_model_relation"] == "merge"
    assert "model-index" not in data and "eval_results" not in data
    text = card.text
    assert text.startswith("\n# tiny-zephyr-expo\n") or text.lstrip().startswith("# tiny-zephyr-expo\n")
    assert text.index("θ_expo = θ_aligned + 0.5·") < text.index("## The aligned model's card")
    assert text.rstrip().endswith("A DPO model trained on UltraFeedback. It likes short answers.")
    assert "--alpha-for norm=0" in text and "--dtype float32" in text
    assert "`model-index` evaluation results" in text
    meta = Metadata.load(None, out, None, 0)  # what llama.cpp's convert_hf_to_gguf.py writes into the GGUF
    assert meta.name == "tiny-zephyr-expo"
    assert meta.license == "apache-2.0" and meta.datasets and meta.base_models
    assert "ultrafeedback_binarized" in json.dumps(meta.datasets) and "tiny-zephyr" in json.dumps(meta.base_models)
    named = tmp_path / "named"
    merge(expo, sft, aligned, named, "--model-name", "My Model")
    assert ModelCard.load(named / "README.md").data.model_name == "My Model"


def test_card_without_an_aligned_card_names_the_folder_and_sweeps_name_each_alpha(tmp_path, expo, pair):
    sft, aligned = pair
    out = tmp_path / "sweep"
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", out, "--alpha", "0.1,0.3")
    assert run.code == 0, run.stderr
    for alpha in ("0.1", "0.3"):
        card = ModelCard.load(out / f"alpha-{alpha}" / "README.md")
        assert card.data.model_name == f"aligned-expo-alpha-{alpha}"
        data = card.data.to_dict()
        assert "base_model" not in data and "base_model_relation" not in data  # the Hub needs both or none
        assert card.text.lstrip().startswith(f"# aligned-expo-alpha-{alpha}")


def test_pipeline_tag_follows_the_architecture():
    assert pipeline_tag(LlavaConfig(architectures=["LlavaForConditionalGeneration"]).to_dict()) == "image-text-to-text"
    assert pipeline_tag(LlavaConfig().to_dict()) == "image-text-to-text"  # no architectures: its vision tower says it
    assert pipeline_tag({"architectures": ["LlamaForCausalLM"]}) == "text-generation"
    assert pipeline_tag({"architectures": ["LlamaForSequenceClassification"]}) == "text-classification"
    assert pipeline_tag({"architectures": "oops"}) is None


# 6. Identical inputs.
def test_the_same_folder_twice_is_refused(tmp_path, expo, pair):
    sft, _ = pair
    run = merge(expo, sft, sft, tmp_path / "out", code=4)
    assert "--sft and --aligned are both" in run.stderr and not (tmp_path / "out").exists()
    assert "θ_expo" not in run.stderr  # nothing announced for a run that does not happen


def test_identical_weights_are_refused_unless_forced(tmp_path, expo, pair):
    sft, _ = pair
    twin = shutil.copytree(sft, tmp_path / "twin")
    before = snapshot(sft), snapshot(twin)
    run = merge(expo, sft, twin, tmp_path / "out", code=4)
    assert "the two checkpoints are identical: extrapolation changes nothing" in run.stderr
    assert "--force" in run.stderr and not (tmp_path / "out").exists()
    assert (snapshot(sft), snapshot(twin)) == before
    merge(expo, sft, twin, tmp_path / "out", "--force")
    merged, original = read_all(tmp_path / "out"), read_all(sft)
    assert all(torch.equal(merged[k], original[k]) for k in original)


# 7. Help and messages.
@pytest.mark.parametrize("command", ["merge", "verify", "inspect", "tune", "push"])
def test_help_reads_right(expo, command):
    run = expo(command, "--help")
    assert run.code == 0
    text = " ".join(run.stdout.split())
    assert "<str>" not in text.split("Arguments:")[-1].split("Examples:")[0].replace("OUTPUT <str>", "").replace(
        "FOLDER <str>", ""
    ).replace("ORG/NAME <str>", "")
    assert "<list" not in text and "<float>" not in text and "<int>" not in text
    assert "mirrors" not in text
    assert "2 bad usage" in text and "130/143 interrupted" in text  # the command's own exit codes
    assert ("5 output cannot be written (exists, no space, read-only, inside an input)" in text) is (
        command not in ("verify", "push")  # they write nothing locally
    )
    assert ("8 expo tune wrote no --output" in text) is (command == "tune")
    assert "[default:" not in text and "{" not in text.split("Examples:")[0]  # one default style, plain names
    assert text.rstrip().endswith(".")  # the exit codes close the help
    if command == "merge":
        assert text.count("5GB") == 2  # the help's example unit and the default, nothing more
        assert "(default: 5GB)" in text and "(default: automatic)" in text
        assert "--alpha ALPHA[,ALPHA...]" in text and "--sft FOLDER|ORG/NAME[@REV]" in text


def test_negative_alpha_formula_small_model_rate_and_no_formula_before_a_failed_validation(tmp_path, expo, pair):
    sft, aligned = pair
    run = merge(expo, sft, aligned, tmp_path / "out", alpha="-1.5")
    assert "θ_expo = θ_aligned − 1.5·(θ_aligned − θ_sft) = θ_sft − 0.5·(θ_aligned − θ_sft)" in run.stderr
    summary = next(li for li in run.stderr.splitlines() if li.startswith("Merged "))
    assert "0.00 GB/s" not in summary and summary.endswith(("kB/s", "MB/s", "GB/s"))
    assert "Warning:" not in run.stderr
    run = merge(expo, sft, aligned, tmp_path / "out", code=5)
    assert "θ_expo" not in run.stderr


def test_notes_are_information_not_warnings(tmp_path, expo):
    sft, aligned = make_pair(tmp_path, arch="gpt2", dtype=torch.float32, sft_tied=True, aligned_tied=False)
    run = merge(expo, sft, aligned, tmp_path / "out")
    assert "Note: tied embeddings" in run.stderr and "Warning:" not in run.stderr
    assert os.listdir(tmp_path / "out")


@pytest.mark.parametrize("evidence", ["card", "config"])
def test_swapped_inputs_are_refused_when_their_metadata_says_so(tmp_path, expo, pair, evidence):
    """The aligned model's card (base_model) or config (_name_or_path, transformers < 5) names the SFT model: given
    as --sft, it is refused before any work, and --force merges it as asked."""
    sft, aligned = pair
    if evidence == "card":
        (aligned / "README.md").write_text(
            "---\nbase_model: org/sft\nlibrary_name: transformers\n---\n# a DPO model\n"
        )
        where = "model card base_model"
    else:
        config = json.loads((aligned / "config.json").read_text())
        (aligned / "config.json").write_text(json.dumps({**config, "_name_or_path": "/home/someone/runs/sft"}))
        where = "config.json _name_or_path"
    run = merge(expo, aligned, sft, tmp_path / "out", code=4)
    assert run.stderr.strip() == (
        f"Error: --sft {aligned} and --aligned {sft} look swapped: {aligned}'s {where} says it was trained from "
        f"{'org/sft' if evidence == 'card' else '/home/someone/runs/sft'}; swap them, or pass --force if they are "
        "right"
    )
    assert not (tmp_path / "out").exists() and "θ_expo" not in run.stderr
    merge(expo, sft, aligned, tmp_path / "right")  # the right way round: no complaint
    forced = merge(expo, aligned, sft, tmp_path / "forced", "--force")
    assert "look swapped" not in forced.stderr


def test_metadata_naming_both_inputs_alike_is_no_evidence(tmp_path, expo, llama_pair):
    """Two runs' folders both called `model`: a card naming `.../model` cannot tell which came first."""
    sft = shutil.copytree(llama_pair[0], tmp_path / "sft-run" / "model")
    aligned = shutil.copytree(llama_pair[1], tmp_path / "dpo-run" / "model")
    (sft / "README.md").write_text("---\nbase_model: base-run/model\n---\n")
    merge(expo, sft, aligned, tmp_path / "out")
