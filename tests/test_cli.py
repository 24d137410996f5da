"""The command line: help, version, the formula, the summary on stdout and stderr, progress and quiet."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import expo_cli


def test_help_lists_examples_and_exit_codes(expo):
    run = expo("merge", "--help")
    assert run.code == 0
    assert "expo merge --sft ./zephyr-sft --aligned ./zephyr-dpo --output ./zephyr-expo --alpha 0.5" in run.stdout
    assert "Exit codes: 0 success" in run.stdout and "4 the two checkpoints do not match" in " ".join(
        run.stdout.split()
    )


def test_options_are_grouped_and_the_command_list_is_not_cut(expo):
    """Panels in a fixed order, each option under one; the top-level list shows whole summaries."""
    run = expo("merge", "--help")
    headings = [line[:-1] for line in run.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["Inputs", "Extrapolation", "Trajectory", "Output", "Hub", "Job arrays", "Speed", "General"]
    section = run.stdout.split("\nHub:\n")[1].split("\n\n")[0]
    assert "--push-to-hub" in section and "--stream " in section and "--alpha " not in section
    run = expo("tune", "--help")
    headings = [line[:-1] for line in run.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings[:4] == ["Inputs", "Prompts", "Objective", "Choice of α"] and headings[-1] == "General"
    assert "Usage: expo verify [OPTIONS] OUTPUT" in expo("verify", "--help").stdout
    top = expo("--help").stdout
    assert "..." not in top.split("Commands:")[1].split("Exit codes")[0]
    assert "Exit codes: 0 success" in top and "8 expo tune wrote no --output" in " ".join(top.split())


def test_version(expo):
    run = expo("--version")
    assert run.code == 0 and run.stdout.strip() == f"expo {expo_cli.__version__}"


def test_help_imports_no_torch():
    """`expo --help` stays fast because it never imports torch (a wall-time limit would be flaky)."""
    code = "import sys\nfrom expo_cli.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
    proc = subprocess.run(
        [sys.executable, "-c", code + "print('torch' in sys.modules)"], capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip().endswith("False")


def test_every_public_name_resolves_to_the_library_without_torch():
    """`__all__` is the public API: each name resolves (lazily), and the package alone loads no torch."""
    code = (
        "import sys, expo_cli\n"
        "loaded = 'torch' in sys.modules\n"
        "names = [n for n in expo_cli.__all__ if n != '__version__']\n"
        "print(loaded, [n for n in names if not getattr(expo_cli, n).__module__.startswith('expo_cli.')])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False []", proc.stderr
    assert {"merge", "sweep", "plan", "push", "tune", "verify", "inspect", "ExpoError"} <= set(expo_cli.__all__)


def test_merge_prints_formula_summary_and_output_path(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    run = expo("merge", "--sft", sft, "--aligned", aligned, "--output", tmp_path / "out", "--alpha", "0.3")
    assert run.code == 0, run.stderr
    assert "θ_expo = θ_aligned + 0.3·(θ_aligned − θ_sft) = θ_sft + 1.3·(θ_aligned − θ_sft)" in run.stderr
    assert "Merged 21 tensors (21 extrapolated) at α=0.3 on cpu" in run.stderr
    assert "Merging" in run.stderr  # the progress bar
    assert run.stdout.strip() == str((tmp_path / "out").resolve())


def test_json_and_quiet(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    out = tmp_path / "out"
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", out, "--alpha", "-0.5", "--json", "--quiet")
    assert run.code == 0
    assert run.stderr == ""
    summary = json.loads(run.stdout)
    assert summary["output"] == str(out.resolve())
    assert summary["alpha"] == -0.5
    assert summary["formula"] == "θ_expo = θ_aligned − 0.5·(θ_aligned − θ_sft) = θ_sft + 0.5·(θ_aligned − θ_sft)"
    assert summary["tensors"] == 21 and summary["shards"] == ["model.safetensors"]
    assert summary["bytes_written"] == (out / "model.safetensors").stat().st_size


def test_progress_bars_honour_the_hub_switch(tmp_path, llama_pair):
    sft, aligned = llama_pair
    env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1", "PATH": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "expo_cli",
            "merge",
            "--sft",
            sft,
            "--aligned",
            aligned,
            "-o",
            tmp_path / "o",
            "--alpha",
            "0.5",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Merging" not in proc.stderr and "Merged 21 tensors" in proc.stderr


def test_bad_dtype_and_shard_size_are_usage_errors(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    base = ("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "o", "--alpha", "0.5")
    run = expo(*base, "--dtype", "int8")
    assert run.code == 2 and "--dtype 'int8': choose one of bfloat16, float16, float32" in run.stderr
    run = expo(*base, "--max-shard-size", "lots")
    assert run.code == 2 and "--max-shard-size 'lots'" in run.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("short", "long"), [("bf16", "bfloat16"), ("FP16", "float16"), ("fp32", "float32")])
def test_the_usual_short_dtype_names_are_the_long_ones(tmp_path, expo, llama_pair, short, long):
    from safetensors import safe_open

    sft, aligned = llama_pair
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "o", "--alpha", "0.5", "--dtype", short)
    assert run.code == 0, run.stderr
    with safe_open(next((tmp_path / "o").glob("*.safetensors")), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {f"torch.{long}"}
    assert json.loads((tmp_path / "o" / "config.json").read_text())["expo"]["dtype"] == long


def test_a_sweep_says_once_that_its_inputs_were_read_once(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "sweep", "--alpha", "0.3,0.5,1")
    assert run.code == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith(("Merged ", "Sweep "))]
    assert [line.split(":")[0] for line in lines] == [
        "Merged 21 tensors (21 extrapolated) at α=0.3",
        "Merged 21 tensors (21 extrapolated) at α=0.5",
        "Merged 21 tensors (21 extrapolated) at α=1",
        "Sweep of 3 α on cpu",
    ]
    assert run.stderr.count(" read") == 1 and " read once, " in lines[-1]


def test_a_plan_does_not_mention_copied_tensors_when_there_are_none(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    plan = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "o", "--alpha", "1", "--dry-run")
    assert "Tensors: 21 (21 extrapolated)\n" in plan.stderr + plan.stdout


def test_push_checks_the_folder_before_saying_it_uploads(tmp_path, expo):
    run = expo("push", tmp_path / "nonexistent", "me/model")
    assert run.code == 3 and "Uploading" not in run.stderr
    assert run.stderr.strip() == (
        f"Error: {tmp_path / 'nonexistent'}: not a model folder (no config.json); push the output of expo merge"
    )
