"""Errors a user can cause: one line on stderr, a documented exit code, no output, inputs untouched."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import build_model, llama_config, make_pair, read_all, run_failing, save, snapshot


@pytest.fixture
def pair(tmp_path, llama_pair):
    """A private copy of the Llama pair that a test may damage."""
    sft, aligned = (shutil.copytree(p, tmp_path / p.name) for p in llama_pair)
    return sft, aligned


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path, expo):
    sft = save(build_model(llama_config(intermediate_size=48), 0), tmp_path / "sft", torch.bfloat16)
    _, aligned = make_pair(tmp_path / "b")
    error = run_failing(expo, tmp_path, sft, aligned, code=4)
    assert "model.layers.0.mlp.gate_proj.weight: sft BF16[48, 32] vs aligned BF16[64, 32]" in error
    assert "(+3 more)" in error


def test_missing_tensor(tmp_path, expo, pair):
    sft, aligned = pair
    tensors = read_all(sft)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    (sft / "model.safetensors").unlink()
    save_file(tensors, sft / "model.safetensors", metadata={"format": "pt"})
    error = run_failing(expo, tmp_path, sft, aligned, code=4)
    assert "model.layers.1.mlp.up_proj.weight BF16[64, 32] is missing from sft" in error


def test_different_architecture(tmp_path, expo):
    sft, _ = make_pair(tmp_path / "a", arch="gpt2")
    _, aligned = make_pair(tmp_path / "b")
    error = run_failing(expo, tmp_path, sft, aligned, code=4)
    assert "config.json model_type differs: sft 'gpt2' vs aligned 'llama'" in error


def test_truncated_shard(tmp_path, expo, pair):
    sft, aligned = pair
    shard = sorted(aligned.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    error = run_failing(expo, tmp_path, sft, aligned, code=3)
    assert str(shard) in error and "truncated" in error


def test_corrupt_header(tmp_path, expo, pair):
    sft, aligned = pair
    file = sft / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[8:20] = b"#" * 12
    file.write_bytes(bytes(data))
    error = run_failing(expo, tmp_path, sft, aligned, code=3)
    assert str(file) in error and "not valid JSON" in error


def test_index_pointing_outside_the_folder(tmp_path, expo, pair):
    sft, aligned = pair
    index_file = aligned / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../sft/model.safetensors"
    index_file.write_text(json.dumps(index))
    error = run_failing(expo, tmp_path, sft, aligned, code=3)
    assert "not a plain .safetensors file name" in error


def test_output_exists(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    error = run_failing(expo, tmp_path, sft, aligned, code=5)
    assert "exists and is not empty; pass --force" in error
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "out", "--alpha", "0.5", "--force", "-q")
    assert run.code == 0, run.stderr
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "model.safetensors").exists()


def test_output_inside_an_input(tmp_path, expo, pair):
    sft, aligned = pair
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", aligned / "expo", "--alpha", "0.5")
    assert run.code == 5 and "is inside --aligned" in run.stderr
    assert not (aligned / "expo").exists()


def test_alpha_must_be_finite(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "out", "--alpha", "nan")
    assert run.code == 2 and "--alpha" in run.stderr
    assert not (tmp_path / "out").exists()


def test_an_alpha_float32_cannot_hold_is_refused_before_any_work(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "out", "--alpha", "-1e39")
    assert run.code == 2 and run.stderr.strip() == "Error: --alpha: -1e+39 is beyond float32's range (±3.4e38)"
    assert not (tmp_path / "out").exists()


def test_missing_folder(tmp_path, expo, llama_pair):
    _, aligned = llama_pair
    error = run_failing(expo, tmp_path, tmp_path / "nope", aligned, code=3)
    assert f"--sft {tmp_path / 'nope'}: no such folder" in error


def test_overflow_is_an_error_naming_the_tensor(tmp_path, expo):
    sft, aligned = make_pair(tmp_path, dtype=torch.float16)
    before = snapshot(sft), snapshot(aligned)
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "out", "--alpha", "1e9")
    assert run.code == 6, run.stderr
    assert "overflows float16" in run.stderr and "try --dtype float32" in run.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".expo-partial-*"))
    assert (snapshot(sft), snapshot(aligned)) == before


def test_nan_in_an_input_is_a_warning_or_with_strict_an_error(tmp_path, expo, pair):
    sft, aligned = pair
    tensors = read_all(sft)
    tensors["model.norm.weight"][3] = float("nan")
    save_file(tensors, sft / "model.safetensors", metadata={"format": "pt"})
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "out", "--alpha", "0.5")
    assert run.code == 0
    assert "Warning: tensor 'model.norm.weight': the sft input already holds inf/NaN" in run.stderr
    error = run_failing(expo, tmp_path / "strict", sft, aligned, "--strict", code=6)
    assert "model.norm.weight" in error


def test_quantized_checkpoint_is_refused(tmp_path, expo, pair):
    sft, aligned = pair
    config = json.loads((aligned / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (aligned / "config.json").write_text(json.dumps(config))
    error = run_failing(expo, tmp_path, sft, aligned, code=3)
    assert "is quantized (gptq)" in error and "supported:" in error


class Payload:
    """Unpickling this would run code: it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_malicious_pickle_never_runs(tmp_path, expo):
    sft, aligned = make_pair(tmp_path, dtype=torch.float32, sft_fmt="bin")
    marker = tmp_path / "pwned"
    state = torch.load(sft / "pytorch_model.bin", weights_only=True)
    state["evil"] = Payload(marker)
    with open(sft / "pytorch_model.bin", "wb") as fh:
        torch.save(state, fh, pickle_module=pickle)
    error = run_failing(expo, tmp_path, sft, aligned, code=3)
    assert "refused or unreadable PyTorch file" in error
    assert not marker.exists()


def test_debug_shows_the_traceback(tmp_path, expo, llama_pair):
    _, aligned = llama_pair
    run = expo(
        "--debug", "merge", "--sft", tmp_path / "nope", "--aligned", aligned, "-o", tmp_path / "o", "--alpha", "1"
    )
    assert run.code == 3 and "Traceback" in run.stderr and run.stderr.rstrip().splitlines()[-1].startswith("Error:")


def test_not_enough_space_is_refused_before_any_work(tmp_path, expo, tmpfs, llama_pair):
    sft, aligned = llama_pair
    small = tmpfs("16k")
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", small / "out", "--alpha", "0.5")
    assert run.code == 5
    assert f"not enough space for {small / 'out'}: needs" in run.stderr and "free; free space" in run.stderr
    assert list(small.iterdir()) == []


def test_disk_full_while_writing_removes_the_partial_output(tmp_path, expo, tmpfs, monkeypatch):
    sft, aligned = make_pair(tmp_path, dtype=torch.float32)
    before = snapshot(sft), snapshot(aligned)
    small = tmpfs("64k")
    # as if the disk filled after the check
    monkeypatch.setattr("expo_cli.merging.planning.check_space", lambda *_: None)
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", small / "out", "--alpha", "0.5")
    assert run.code == 5, run.stderr
    assert f"Error: disk full writing {small}" in run.stderr and "free space and run again" in run.stderr
    assert "Traceback" not in run.stderr
    assert list(small.iterdir()) == []
    assert (snapshot(sft), snapshot(aligned)) == before


def test_read_only_output_is_refused(tmp_path, expo, tmpfs, llama_pair):
    sft, aligned = llama_pair
    readonly = tmpfs("1m", readonly=True)
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", readonly / "out", "--alpha", "0.5")
    assert run.code == 5 and f"cannot write into {readonly}: Read-only file system" in run.stderr


def test_output_equal_to_an_input_is_refused(tmp_path, expo, pair):
    sft, aligned = pair
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", aligned, "--alpha", "0.5", "--force")
    assert run.code == 5 and "is the --aligned folder; inputs are never overwritten" in run.stderr
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path, "--alpha", "0.5", "--force")
    assert run.code == 5 and "contains --sft" in run.stderr


def test_missing_parent_folders_are_created(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "a" / "b" / "out", "--alpha", "0.5")
    assert run.code == 0 and (tmp_path / "a" / "b" / "out" / "model.safetensors").exists()
