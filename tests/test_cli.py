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
