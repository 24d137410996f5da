"""`expo verify`: a correct output passes; a changed byte or element (even with its checksum updated), a wrong α,
a stray or missing shard, or missing checksums fail with exit 1."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers import make_pair


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    import expo_cli

    root = tmp_path_factory.mktemp("verify")
    sft, aligned = make_pair(root, dtype=torch.bfloat16, aligned_vocab=100)  # grown rows are checked too
    expo_cli.merge(sft, aligned, root / "out", 0.7, max_shard_size="30KB", progress=False)
    return sft, aligned, root / "out"


def test_a_correct_output_verifies(expo, merged):
    sft, aligned, out = merged
    run = expo("verify", out, "--sft", sft, "--aligned", aligned, "--json")
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] and report["alpha"] == 0.7 and report["mismatches"] == [] and report["checksum_errors"] == []
    assert "OK: 21 tensors" in run.stderr


def test_a_changed_byte_is_found(tmp_path, expo, merged):
    sft, aligned, out = merged
    copy = shutil.copytree(out, tmp_path / "out")
    shard = sorted(copy.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x40
    shard.write_bytes(bytes(data))
    run = expo("verify", copy, "--sft", sft, "--aligned", aligned)
    assert run.code == 1
    assert f"checksum: {shard.name}: sha256" in run.stderr
    assert "elements off" in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("Error:") and "1 tensor(s) differ" in run.stderr


def test_another_alpha_does_not_verify(expo, merged):
    sft, aligned, out = merged
    run = expo("verify", out, "--sft", sft, "--aligned", aligned, "--alpha", "0.5", "--quiet")
    assert run.code == 1 and "tensor(s) differ" in run.stderr and "model.embed_tokens.weight" in run.stderr


def test_a_missing_shard_is_reported(tmp_path, expo, merged):
    sft, aligned, out = merged
    copy = shutil.copytree(out, tmp_path / "out")
    index = json.loads((copy / "model.safetensors.index.json").read_text())
    last = sorted(copy.glob("model-*.safetensors"))[-1]
    last.unlink()
    run = expo("verify", copy, "--sft", sft, "--aligned", aligned)
    assert run.code == 1 and f"shard {last.name} missing" in run.stderr  # found by verify, before any loading
    assert last.name in index["weight_map"].values()


def test_per_tensor_rules_are_verified_too(tmp_path, expo, merged):
    sft, aligned, _ = merged
    out = tmp_path / "ruled"
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", out, "--alpha", "0.7", "--alpha-for", "mlp=2", "-q")
    assert run.code == 0, run.stderr
    assert expo("verify", out, "--sft", sft, "--aligned", aligned, "-q").code == 0


def tamper(out: Path, name: str, change) -> None:
    """Change one tensor of an output in place and record the shard's new sha256: only the element check sees it."""
    index = out / "model.safetensors.index.json"
    shard = json.loads(index.read_text())["weight_map"][name] if index.exists() else "model.safetensors"
    with safe_open(out / shard, framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    change(tensors[name].view(-1))
    save_file(tensors, out / shard, metadata=metadata)
    config = json.loads((out / "config.json").read_text())
    config["expo"]["shards"][shard] = hashlib.sha256((out / shard).read_bytes()).hexdigest()
    (out / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def merged_f32(tmp_path_factory):
    """float32 pair with an integer tensor beside the weights, merged at α=0.3 into one shard."""
    import expo_cli

    root = tmp_path_factory.mktemp("verify32")
    sft, aligned = make_pair(root, dtype=torch.float32, aligned_shards=None)
    for folder in (sft, aligned):
        tensors = load_file(folder / "model.safetensors")
        tensors["model.step_ids"] = torch.arange(40, dtype=torch.int64)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    expo_cli.merge(sft, aligned, root / "out", 0.3, progress=False)
    return sft, aligned, root / "out"


def up(steps: int):
    def change(flat: torch.Tensor) -> None:
        i = int(flat.abs().argmax())
        for _ in range(steps):
            flat[i] = torch.nextafter(flat[i], torch.tensor(float("inf"), dtype=flat.dtype))

    return change


def set_first(value: float):
    def change(flat: torch.Tensor) -> None:
        flat[0] = value

    return change


@pytest.mark.parametrize(
    ("fixture", "tensor", "change"),
    [
        ("merged_f32", "model.layers.0.mlp.up_proj.weight", up(2)),  # 2 ulp off in float32
        ("merged_f32", "model.layers.1.self_attn.q_proj.weight", set_first(float("nan"))),
        ("merged_f32", "model.step_ids", set_first(7)),  # an integer tensor: copied, so exact
        ("merged", "lm_head.weight", lambda flat: flat[-1:].add_(1)),  # a grown-vocabulary row: copied, so exact
    ],
    ids=["float32-2ulp", "nan", "integer", "grown-row"],
)
def test_a_changed_element_is_found_even_with_its_checksum_updated(tmp_path, expo, request, fixture, tensor, change):
    sft, aligned, out = request.getfixturevalue(fixture)
    copy = shutil.copytree(out, tmp_path / "out")
    assert expo("verify", copy, "--sft", sft, "--aligned", aligned, "-q").code == 0
    tamper(copy, tensor, change)
    run = expo("verify", copy, "--sft", sft, "--aligned", aligned, "--json")
    assert run.code == 1, run.stderr
    report = json.loads(run.stdout)
    assert report["checksum_errors"] == [] and [m["tensor"] for m in report["mismatches"]] == [tensor]
    assert report["mismatches"][0]["elements"] == 1


def test_a_stray_shard_and_missing_checksums_fail(tmp_path, expo, merged_f32):
    sft, aligned, out = merged_f32
    stray = shutil.copytree(out, tmp_path / "stray")
    shutil.copy(stray / "model.safetensors", stray / "model-extra.safetensors")
    run = expo("verify", stray, "--sft", sft, "--aligned", aligned)
    assert run.code == 1 and "checksum: model-extra.safetensors: not in the recorded shards" in run.stderr
    bare = shutil.copytree(out, tmp_path / "bare")
    config = json.loads((bare / "config.json").read_text())
    del config["expo"]["shards"]
    (bare / "config.json").write_text(json.dumps(config))
    run = expo("verify", bare, "--sft", sft, "--aligned", aligned)
    assert run.code == 1 and "records no shard checksums" in run.stderr


def test_inherited_nan_is_not_a_difference(tmp_path, expo, merged_f32):
    sft, aligned, _ = merged_f32
    sick = shutil.copytree(aligned, tmp_path / "aligned")
    tensors = load_file(sick / "model.safetensors")
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, sick / "model.safetensors", metadata={"format": "pt"})
    run = expo("merge", "--sft", sft, "--aligned", sick, "-o", tmp_path / "out", "--alpha", "0.3", "-q")
    assert run.code == 0 and "already holds inf/NaN" in run.stderr
    assert expo("verify", tmp_path / "out", "--sft", sft, "--aligned", sick, "-q").code == 0


def test_thorough_checks_every_element_against_float64(tmp_path, expo, merged_f32):
    sft, aligned, out = merged_f32
    assert expo("verify", out, "--sft", sft, "--aligned", aligned, "--thorough", "-q").code == 0
    copy = shutil.copytree(out, tmp_path / "out")
    tamper(copy, "model.layers.0.mlp.up_proj.weight", up(2))
    run = expo("verify", copy, "--sft", sft, "--aligned", aligned, "--thorough", "--json")
    assert run.code == 1 and json.loads(run.stdout)["mismatches"][0]["elements"] == 1


def test_a_failed_check_says_what_the_provenance_records(tmp_path, expo):
    """Another --alpha, swapped inputs, inputs not its own: each failure names the likely cause, in one line."""
    import expo_cli

    sft, aligned = make_pair(tmp_path, dtype=torch.bfloat16)  # no grown rows: swapped, they still pair
    out = tmp_path / "out"
    expo_cli.merge(sft, aligned, out, 0.7, progress=False)
    run = expo("verify", out, "--sft", sft, "--aligned", aligned, "--alpha", "0.3", "-q")
    assert run.code == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: {out.resolve()}: ") and "tensor(s) differ" in last
    assert last.endswith("; its config.json records α=0.7: leave out --alpha to check that one")
    run = expo("verify", out, "--sft", aligned, "--aligned", sft, "-q")
    assert run.code == 1
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .endswith("at α=0.7; --sft and --aligned look swapped: it was made with --sft sft --aligned aligned")
    )
    elsewhere = shutil.copytree(aligned, tmp_path / "dpo-v2")  # the same weights under another name
    run = expo("verify", out, "--sft", aligned, "--aligned", elsewhere, "-q")
    assert run.code == 1 and run.stderr.strip().endswith("it records its inputs as sft 'sft' and aligned 'aligned'")
    run = expo("verify", out, "--sft", sft, "--aligned", aligned, "-q")
    assert run.code == 0 and "Error" not in run.stderr  # no hint where nothing failed


def test_a_sweeps_folder_or_a_missing_one_is_named_with_what_to_pass(tmp_path, expo, merged):
    import expo_cli

    sft, aligned, _ = merged
    expo_cli.sweep(sft, aligned, tmp_path / "sweep", [0.3, 0.5], progress=False)
    run = expo("verify", tmp_path / "sweep", "--sft", sft, "--aligned", aligned)
    assert run.code == 2 and run.stdout == ""
    assert run.stderr.strip() == (
        f"Error: {tmp_path / 'sweep'}: a sweep's folder, not a checkpoint; verify one of its outputs, e.g. "
        f"expo verify {tmp_path / 'sweep' / 'alpha-0.3'}"
    )
    run = expo("verify", tmp_path / "nowhere", "--sft", sft, "--aligned", aligned)
    assert run.code == 3
    assert (
        run.stderr.strip()
        == f"Error: {tmp_path / 'nowhere'}: no such folder; pass the folder expo merge wrote (its --output)"
    )
