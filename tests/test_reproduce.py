"""The reproduction example, small: SFT → DPO with TRL on the toy task, then expo tune on its snapshots.

Asserts only what is robust at this size: the pipeline runs end to end, and extrapolating the partially trained
(20%) snapshot at the α expo tune chose on dev prompts gains dev reward significantly over α = 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reproduce"
sys.path.insert(0, str(EXAMPLE))

from task import build_tokenizer, gold_reward, noisy, target  # noqa: E402


def test_the_gold_reward_counts_positions_and_cannot_be_gamed_by_length():
    assert gold_reward("1234>", "4321") == 1.0
    assert gold_reward("1234>", "4320") == 0.75
    assert gold_reward("1234>", "432") == 0.75  # a missing digit costs
    assert gold_reward("1234>", "43211") == 0.8  # an extra one too
    assert gold_reward("1234>", "4321" * 5) == 0.2
    assert gold_reward("1234>", "") == 0.0


def test_the_tokenizer_round_trips_and_renders_prompts_as_training_saw_them():
    import random

    tokenizer = build_tokenizer()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "90817"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "90817>"
    ids = tokenizer(text + "71809$")["input_ids"]
    assert len(ids) == 12 and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[6:], skip_special_tokens=True) == "71809"
    rng = random.Random(0)
    samples = [noisy(rng, target("12345678>")) for _ in range(2000)]
    same_length = [s for s in samples if len(s) == 8]
    wrong = sum(a != b for s in same_length for a, b in zip(s, "87654321", strict=True)) / (8 * len(same_length))
    assert wrong == pytest.approx(0.35 * 0.9, abs=0.02)  # a flipped digit is another digit 9 times in 10
    assert 0.05 < sum(len(s) != 8 for s in samples) / 2000 < 0.15
    assert all(set(s) <= set("0123456789") for s in samples)


@pytest.mark.slow
def test_the_quick_reproduction_runs_and_extrapolating_a_partial_checkpoint_helps(tmp_path):
    run = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), "--out", str(tmp_path), "--quick"],
        capture_output=True,
        text=True,
        timeout=1800,  # ~1.5 minutes alone; a bound for a busy machine, not a timing test
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    (result,) = summary["results"]
    models = [row["model"] for row in result["rows"]]
    assert models[0] == "sft" and "dpo-20 + ExPO" in models and "dpo-100" in models
    partial = result["dev"]["dpo-20"]
    assert partial["alpha"] > 0, partial["reason"]  # expo tune found a significant gain on dev
    assert partial["gain"]["low"] > 0
    assert "held-out prompts" in partial["held_out"]  # 30% of the dev prompts confirm (or not) the choice
    assert (tmp_path / "reproduce.png").read_bytes()[:4] == b"\x89PNG"
    (page,) = tmp_path.glob("seed-*/report-dpo-20.html")
    assert "<h1>expo tune: what α does to the answers</h1>" in page.read_text()
    assert "20% + ExPO ≥ 100%:" in run.stdout


def test_the_trajectory_measurement_s_r_squared_on_snapshots_whose_fit_is_known(tmp_path):
    """R² per tensor through the 5–20% snapshots: 1 for a tensor linear in the step; 0.2 for values alternating
    0, 1, 0, 1 at steps 5, 10, 15, 20 (slope 0.04, so the line explains 0.04²·125 of a total sum of squares of 1)."""
    import torch
    from run import QUICK
    from safetensors.torch import save_file
    from trajectory import FIT, r_squared, step_of

    steps = [step_of(f, QUICK) for f in FIT]
    assert steps == [5, 10, 15, 20]
    for i, (fraction, step) in enumerate(zip(FIT, steps, strict=True)):
        folder = tmp_path / f"dpo-{round(100 * fraction)}"
        folder.mkdir()
        tensors = {
            "model.layers.0.self_attn.q_proj.weight": torch.full((4, 4), 0.5 + 0.01 * step),
            "model.layers.1.self_attn.q_proj.weight": torch.full((4, 4), 1.0 - 0.02 * step),
            "model.layers.0.mlp.down_proj.weight": torch.full((2, 3), float(i % 2)),
        }
        save_file(tensors, folder / "model.safetensors")
    found = r_squared(tmp_path, QUICK)
    assert found["q/k/v"]["median"] == pytest.approx(1.0) and found["q/k/v"]["tensors"] == 2
    assert found["down"]["median"] == pytest.approx(0.2)
