"""The CUDA path: same results as the formula, within one rounding step. Skipped where there is no GPU."""

from __future__ import annotations

import pytest
import torch

import expo_cli
from helpers import assert_merged, make_pair

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none on this machine"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_merge_matches_the_reference(tmp_path, dtype, monkeypatch):
    sft, aligned = make_pair(tmp_path, dtype=dtype, sft_shards="25KB")
    monkeypatch.setattr("expo_cli.core.streaming.CHUNK_ELEMENTS", 1000)  # many chunks: exercises the pinned ring
    result = expo_cli.merge(sft, aligned, tmp_path / "out", 0.3, device="cuda", progress=False)
    assert result.device.startswith("cuda")
    assert_merged(tmp_path / "out", sft, aligned, 0.3)


def test_cuda_mixed_dtypes_and_override(tmp_path):
    sft, aligned = make_pair(tmp_path, dtype=torch.bfloat16, sft_dtype=torch.float32)
    expo_cli.merge(sft, aligned, tmp_path / "out", 2.5, device="cuda", dtype="float32", progress=False)
    assert_merged(tmp_path / "out", sft, aligned, 2.5, dtype=torch.float32)


def test_cuda_tune_candidates_are_the_cpu_merge_bit_for_bit(tmp_path):
    """expo tune on a GPU: θ(α) computed on the device straight into the parameters equals the CPU merge's
    output where the arithmetic is one rounding (bfloat16 lerp), and the raw α = 0 copy is exact."""
    from transformers import AutoModelForCausalLM

    from expo_cli.merging.planning import prepare
    from expo_cli.options import MergeOptions
    from expo_cli.tuning.backends.candidates import CandidateModel
    from helpers import read_all

    sft, aligned = make_pair(tmp_path, dtype=torch.bfloat16)
    run = prepare(sft, aligned, {}, MergeOptions(progress=False, device="cuda"))
    model = AutoModelForCausalLM.from_pretrained(aligned, dtype=torch.bfloat16).to("cuda")
    candidate = CandidateModel.attach(model, run)
    for alpha in (0.5, 0.0):
        candidate.set_alpha(alpha, MergeOptions())
        expo_cli.merge(sft, aligned, tmp_path / f"cpu-{alpha}", alpha, device="cpu", progress=False)
        state = model.state_dict()
        for name, tensor in read_all(tmp_path / f"cpu-{alpha}").items():
            assert torch.equal(state[name].cpu(), tensor), name
