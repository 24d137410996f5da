"""`expo verify`: a correct output passes; a changed byte, a wrong α or a missing shard fails with exit 1."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from _checkpoints import make_pair


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
    assert run.code == 3 and last.name in run.stderr  # the index names a shard that is gone
    assert index["weight_map"]


def test_per_tensor_rules_are_verified_too(tmp_path, expo, merged):
    sft, aligned, _ = merged
    out = tmp_path / "ruled"
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", out, "--alpha", "0.7", "--alpha-for", "mlp=2", "-q")
    assert run.code == 0, run.stderr
    assert expo("verify", out, "--sft", sft, "--aligned", aligned, "-q").code == 0
