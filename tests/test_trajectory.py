"""expo merge --trajectory and --delta-rank: outputs against float64 references, the two-point reduction to ExPO
byte for byte, job-array parts, plans, and the checks made before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import (
    add_tokenizer_files,
    build_model,
    gpt2_config,
    llama_config,
    make_pair,
    perturb,
    read_all,
    save,
    snapshot,
    ulp,
)

STEPS = (0, 10, 20, 30)


def trajectory(root: Path, dtype: torch.dtype, config=None, steps=STEPS, shards="30KB") -> list[Path]:
    """Checkpoints of one training run: a drift linear in the step plus noise, as RLVR/DPO trajectories look."""
    config = config or llama_config()
    start = build_model(config, seed=0)
    drift = torch.Generator().manual_seed(99)
    directions = [torch.randn(p.shape, generator=drift) for p in start.parameters()]
    paths = []
    for i, step in enumerate(steps):
        model = build_model(config, seed=0)
        model.load_state_dict(start.state_dict())
        with torch.no_grad():
            for p, d in zip(model.parameters(), directions, strict=True):
                p.add_(d * 0.001 * step)
        perturb(model, seed=100 + i, scale=0.0003)
        path = save(model, root / f"step-{step}", dtype, shards)
        add_tokenizer_files(path)
        paths.append(path)
    return paths


def specs(paths: list[Path], steps=STEPS) -> list[str]:
    return [arg for step, path in zip(steps, paths, strict=True) for arg in ("--trajectory", f"{step}={path}")]


def line_reference(values: list[torch.Tensor], steps, at: float) -> torch.Tensor:
    """The least-squares line through each element's values, at `at`, in float64 (numpy's lstsq)."""
    stacked = np.stack([v.double().reshape(-1).numpy() for v in values])
    design = np.vstack([np.ones(len(steps)), np.asarray(steps, dtype=np.float64)]).T
    coefficients, *_ = np.linalg.lstsq(design, stacked, rcond=None)
    return torch.from_numpy(coefficients[0] + coefficients[1] * at)


def assert_close_to(out: torch.Tensor, ref: torch.Tensor, terms: torch.Tensor, name: str) -> None:
    """Within half a unit in the last place of the output dtype (one rounding) plus the float32 arithmetic's own
    error: a few float32 roundings of the terms summed (`terms`: Σ|w_i·θ_i|)."""
    bound = 0.5 * ulp(ref, out.dtype) + 8 * torch.finfo(torch.float32).eps * terms
    diff = (out.reshape(-1).double() - ref).abs()
    assert (diff <= bound).all(), f"{name}: {int((diff > bound).sum())} elements beyond the bound (max {diff.max()})"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_trajectory_is_the_least_squares_line_at_the_step_rounded_once(expo, tmp_path, dtype):
    paths = trajectory(tmp_path, dtype)
    out = tmp_path / "out"
    run = expo("merge", *specs(paths), "--to-step", 75, "--output", out, "--json", "-q")
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["trajectory"]["to_step"] == 75
    assert [c["step"] for c in report["trajectory"]["checkpoints"]] == list(STEPS)
    assert report["alpha"] == pytest.approx((75 - 30) / 30)
    inputs = [read_all(p) for p in paths]
    merged = read_all(out)
    assert set(merged) == set(inputs[-1])
    weights = np.linalg.lstsq(np.vstack([np.ones(4), np.asarray(STEPS, dtype=np.float64)]).T, np.eye(4), rcond=None)[0]
    for name, tensor in merged.items():
        assert tensor.dtype == dtype and tensor.shape == inputs[-1][name].shape
        ref = line_reference([i[name] for i in inputs], STEPS, 75)
        terms = sum(
            abs(weights[0, k] + 75 * weights[1, k]) * i[name].double().abs().reshape(-1) for k, i in enumerate(inputs)
        )
        assert_close_to(tensor, ref, terms * 4, name)
    config = json.loads((out / "config.json").read_text())["expo"]
    assert config["trajectory"]["to_step"] == 75
    assert all(str(tmp_path) not in c["checkpoint"] for c in config["trajectory"]["checkpoints"])  # no local path
    assert "line through the 4 checkpoints at step 75" in config["formula"]
    assert config["sft"]["name"] == "step-0" and config["aligned"]["name"] == "step-30"  # the line's two ends


def test_tied_embeddings_and_integer_tensors_follow_the_last_checkpoint(expo, tmp_path):
    paths = trajectory(tmp_path, torch.bfloat16, config=gpt2_config(), steps=(0, 5, 10))
    out = tmp_path / "out"
    assert expo("merge", *specs(paths, (0, 5, 10)), "--to-step", 20, "-o", out, "-q").code == 0
    merged, inputs = read_all(out), [read_all(p) for p in paths]
    assert set(merged) == set(inputs[-1])  # the tied head stays tied (not stored)
    name = "transformer.wte.weight"
    ref = line_reference([i[name] for i in inputs], (0, 5, 10), 20)
    assert_close_to(merged[name], ref, 8 * sum(i[name].double().abs().reshape(-1) for i in inputs), name)


@pytest.mark.parametrize(
    "settings",
    [
        {"dtype": torch.bfloat16},
        {"dtype": torch.bfloat16, "sft_tied": True, "aligned_tied": False},
        {"dtype": torch.bfloat16, "aligned_vocab": 100},
        {"dtype": torch.float32, "sft_dtype": torch.bfloat16},
    ],
    ids=["plain", "tied-sft", "grown-vocab", "mixed-dtypes"],
)
def test_two_checkpoints_at_steps_0_and_1_are_expo_byte_for_byte(expo, tmp_path, settings):
    sft, aligned = make_pair(tmp_path, **settings)
    line, expo_out = tmp_path / "line", tmp_path / "expo"
    assert (
        expo(
            "merge", "--trajectory", f"0={sft}", "--trajectory", f"1={aligned}", "--to-step", 3.5, "-o", line, "-q"
        ).code
        == 0
    )
    assert expo("merge", "--sft", sft, "--aligned", aligned, "--alpha", 2.5, "-o", expo_out, "-q").code == 0
    weights = {n: b for n, b in snapshot(line).items() if n.endswith(".safetensors")}
    merged, before = read_all(line), read_all(aligned)
    assert any(not torch.equal(merged[n], before[n]) for n in merged)  # extrapolated, not the aligned model copied
    assert weights and weights == {n: b for n, b in snapshot(expo_out).items() if n.endswith(".safetensors")}
    # steps elsewhere scale α: two checkpoints at 100 and 300, extrapolated to 800, are α = 2.5 as well
    scaled = tmp_path / "scaled"
    assert (
        expo(
            "merge",
            "--trajectory",
            f"100={sft}",
            "--trajectory",
            f"300={aligned}",
            "--to-step",
            800,
            "-o",
            scaled,
            "-q",
        ).code
        == 0
    )
    assert weights == {n: b for n, b in snapshot(scaled).items() if n.endswith(".safetensors")}


def test_job_array_parts_write_the_bytes_of_a_single_run(expo, tmp_path):
    paths = trajectory(tmp_path, torch.bfloat16)
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    common = [*specs(paths), "--to-step", 50, "--delta-rank", 2, "--max-shard-size", "20KB", "-q"]
    assert expo("merge", *common, "-o", whole).code == 0
    assert expo("merge", *common, "-o", parted, "--part", "1/2").code == 0
    assert not parted.exists()
    assert expo("merge", *common, "-o", parted, "--part", "2/2").code == 0
    assert len([n for n in snapshot(whole) if n.endswith(".safetensors")]) > 1
    assert snapshot(whole) == snapshot(parted)


def svd_reference(
    sft: torch.Tensor, aligned: torch.Tensor, rank: int, alpha: float
) -> tuple[torch.Tensor, float, float]:
    """θ_sft + (1 + α)·Δ_r in float64, the share of ‖Δ‖² that Δ_r keeps, and Δ's largest singular value."""
    delta = aligned.double() - sft.double()
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return sft.double() + (1 + alpha) * approx, float((s[:rank] ** 2).sum() / (s**2).sum()), float(s[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_delta_rank_extrapolates_each_matrix_update_s_best_rank_r_approximation(expo, tmp_path, dtype):
    sft, aligned = make_pair(tmp_path, dtype=dtype)
    out = tmp_path / "out"
    run = expo(
        "merge", "--sft", sft, "--aligned", aligned, "--alpha", 0.5, "--delta-rank", 3, "-o", out, "--json", "-q"
    )
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)["delta_rank"]
    merged, s, a = read_all(out), read_all(sft), read_all(aligned)
    assert report["rank"] == 3 and report["matrices"] == sum(t.dim() == 2 for t in a.values())
    for name, tensor in merged.items():
        if a[name].dim() != 2:  # vectors: plain ExPO
            ref = a[name].double() + 0.5 * (a[name].double() - s[name].double())
            assert_close_to(tensor, ref.reshape(-1), 4 * ref.abs().reshape(-1), name)
            continue
        ref, kept, largest = svd_reference(s[name], a[name], 3, 0.5)
        assert report["energy_kept"][name] == pytest.approx(kept, abs=2e-6)
        assert 0 < kept < 1
        # plus a float32 SVD's own error: about (smaller side)·ε·σ_1 per element of Δ_r, times 1 + α
        svd_error = 1.5 * min(a[name].shape) * largest
        assert_close_to(
            tensor, ref.reshape(-1), 4 * (s[name].double().abs() + ref.abs()).reshape(-1) + svd_error, name
        )


def test_a_rank_as_large_as_the_matrix_changes_nothing(expo, tmp_path):
    sft, aligned = make_pair(tmp_path)
    full, plain = tmp_path / "full", tmp_path / "plain"
    assert (
        expo("merge", "--sft", sft, "--aligned", aligned, "--alpha", 1, "--delta-rank", 4096, "-o", full, "-q").code
        == 0
    )
    assert expo("merge", "--sft", sft, "--aligned", aligned, "--alpha", 1, "-o", plain, "-q").code == 0
    low = tmp_path / "low"
    assert (
        expo("merge", "--sft", sft, "--aligned", aligned, "--alpha", 1, "--delta-rank", 2, "-o", low, "-q").code == 0
    )
    assert weights_of(low) != weights_of(plain)  # a rank below the matrices' changes the output
    assert weights_of(full) == weights_of(plain)


def test_the_randomised_svd_of_a_large_matrix_is_the_best_rank_r_approximation():
    from expo_cli.inputs.lowrank import EXACT_UP_TO, low_rank

    generator = torch.Generator().manual_seed(0)
    rows, cols = EXACT_UP_TO + 200, EXACT_UP_TO + 76
    u = torch.linalg.qr(torch.randn(rows, 8, generator=generator, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(cols, 8, generator=generator, dtype=torch.float64))[0]
    spectrum = torch.tensor([10.0, 7, 5, 3, 1, 0.5, 0.2, 0.1], dtype=torch.float64)
    matrix = (u * spectrum) @ v.T + 1e-4 * torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    for rank in (1, 4):
        got, kept = low_rank(matrix.float(), rank, seed=7)
        uu, ss, vv = torch.linalg.svd(matrix, full_matrices=False)
        best = (uu[:, :rank] * ss[:rank]) @ vv[:rank]
        assert (got.double() - best).abs().max() < 1e-5 * float(spectrum[0])
        assert kept == pytest.approx(float((ss[:rank] ** 2).sum() / (ss**2).sum()), rel=1e-5)
        again, _ = low_rank(matrix.float(), rank, seed=7)
        assert torch.equal(got, again)  # seeded: every run and part computes the same bits


def test_a_dry_run_plans_the_trajectory_without_writing(expo, tmp_path):
    paths = trajectory(tmp_path, torch.bfloat16, steps=(0, 10, 20))
    out = tmp_path / "out"
    run = expo("merge", *specs(paths, (0, 10, 20)), "--to-step", 40, "-o", out, "--dry-run", "--json")
    assert run.code == 0, run.stderr
    plan = json.loads(run.stdout)
    assert plan["outputs"] == {"1": str(out)} and not out.exists()
    assert plan["bytes_read"] == 3 * sum(t.numel() * t.element_size() for t in read_all(paths[-1]).values())


@pytest.mark.parametrize(
    "build, message, code",
    [
        (
            lambda p: ["--trajectory", f"10={p[0]}", "--trajectory", f"5={p[1]}", "--to-step", 20],
            "steps must increase",
            2,
        ),
        (lambda p: ["--trajectory", f"5={p[0]}", "--trajectory", f"5={p[1]}", "--to-step", 20], "must increase", 2),
        (lambda p: ["--trajectory", f"0={p[0]}", "--trajectory", f"5={p[0]}/", "--to-step", 20], "listed twice", 2),
        (lambda p: ["--trajectory", f"0={p[0]}", "--to-step", 20], "at least two", 2),
        (
            lambda p: ["--trajectory", f"zero={p[0]}", "--trajectory", f"5={p[1]}", "--to-step", 9],
            "STEP=CHECKPOINT",
            2,
        ),
        (lambda p: ["--trajectory", f"0={p[0]}", "--trajectory", f"5={p[1]}"], "--to-step", 2),
        (
            lambda p: ["--trajectory", f"0={p[0]}", "--trajectory", f"5={p[1]}", "--to-step", 9, "--alpha", 1],
            "drop --sft",
            2,
        ),
        (lambda p: ["--sft", p[0], "--aligned", p[1], "--alpha", 1, "--to-step", 9], "needs --trajectory", 2),
        (lambda p: ["--sft", p[0], "--aligned", p[1], "--alpha", 1, "--delta-rank", 0], "at least 1", 2),
        (lambda p: [*specs([p[0], p[2], p[1]], (0, 5, 10)), "--to-step", 20], "every checkpoint of a trajectory", 4),
    ],
    ids=[
        "decreasing",
        "equal",
        "twice",
        "one",
        "bad-step",
        "no-to-step",
        "with-alpha",
        "to-step-alone",
        "rank-0",
        "other-model",
    ],
)
def test_bad_trajectories_are_refused_before_any_work(expo, tmp_path, build, message, code):
    first, second = trajectory(tmp_path, torch.bfloat16, steps=(0, 5))
    other = save(build_model(llama_config(num_hidden_layers=1), seed=3), tmp_path / "other", torch.bfloat16)
    out = tmp_path / "out"
    run = expo("merge", *build([first, second, other]), "-o", out)
    assert run.code == code, run.stderr
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert not out.exists()


def tune_args(workspace: Path, *inputs: object) -> list[str]:
    args = [*inputs, "--prompts", workspace / "prompts.jsonl", "--reward-fn", f"{workspace / 'grader.py'}:w7_share"]
    args += ["--holdout", "0.5", "--max-new-tokens", "8", "--temperature", "1", "--batch-size", "8", "--json", "-q"]
    return [str(a) for a in args]


def weights_of(folder: Path) -> dict[str, bytes]:
    return {n: b for n, b in snapshot(folder).items() if n.endswith(".safetensors")}


def test_tune_over_a_two_point_trajectory_is_tune_over_alpha(expo, steered, workspace):
    sft, aligned = steered
    by_alpha = expo("tune", *tune_args(workspace, "--sft", sft, "--aligned", aligned, "--alpha", "0.5,2"))
    by_step = expo(
        "tune",
        *tune_args(workspace, "--trajectory", f"0={sft}", "--trajectory", f"1={aligned}", "--to-step", "1.5,3"),
    )
    assert by_alpha.code == by_step.code == 0, by_step.stderr
    alpha_report, step_report = json.loads(by_alpha.stdout), json.loads(by_step.stdout)
    rewards = [json.dumps(c["reward"]) for c in alpha_report["candidates"]]
    assert len(set(rewards)) == len(rewards) == 3  # the candidates answer differently: equality below means something
    trajectory = step_report.pop("trajectory")
    assert trajectory["candidates"] == {"0": 1, "0.5": 1.5, "2": 3}
    assert trajectory["to_step"] == 1 + step_report["alpha"]
    for report in (alpha_report, step_report):
        report.pop("timing"), report.pop("run")
    assert alpha_report == step_report


def test_tune_chooses_a_step_of_a_trajectory_and_a_low_rank_alpha_and_writes_what_merge_writes(
    expo, steered, workspace, tmp_path
):
    sft, aligned = steered
    a, s = read_all(aligned), read_all(sft)
    middle = tmp_path / "middle"
    from safetensors.torch import save_file

    middle.mkdir()
    save_file({n: (s[n] + 0.4 * (a[n] - s[n])).contiguous() for n in a}, middle / "model.safetensors")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (aligned / name).exists():
            (middle / name).write_bytes((aligned / name).read_bytes())
    points = ["--trajectory", f"0={sft}", "--trajectory", f"1={middle}", "--trajectory", f"2={aligned}"]
    tuned_out = tmp_path / "tuned"
    run = expo("tune", *tune_args(workspace, *points, "--to-step", "3,5"), "--output", tuned_out, "--force")
    assert run.code == 0, run.stderr
    chosen = json.loads(run.stdout)["trajectory"]["to_step"]
    assert chosen in (3, 5), chosen  # beyond the last step: the output differs from the baseline's
    merged, baseline = tmp_path / "merged", tmp_path / "baseline"
    assert expo("merge", *points, "--to-step", chosen, "-o", merged, "-q").code == 0
    assert expo("merge", *points, "--to-step", 2, "-o", baseline, "-q").code == 0
    assert weights_of(merged) != weights_of(baseline)
    assert weights_of(tuned_out) == weights_of(merged)
    low_out = tmp_path / "low"
    run = expo("tune", *tune_args(workspace, "--sft", sft, "--aligned", aligned, "--alpha", "1,3", "--delta-rank", 2),
               "--output", low_out, "--force")  # fmt: skip
    assert run.code == 0, run.stderr
    merged_low = tmp_path / "merged-low"
    alpha = json.loads(run.stdout)["alpha"]
    assert (
        expo(
            "merge", "--sft", sft, "--aligned", aligned, "--alpha", alpha, "--delta-rank", 2, "-o", merged_low, "-q"
        ).code
        == 0
    )
    assert weights_of(low_out) == weights_of(merged_low)
    plain = tmp_path / "plain"
    assert expo("merge", "--sft", sft, "--aligned", aligned, "--alpha", alpha, "-o", plain, "-q").code == 0
    assert weights_of(plain) != weights_of(merged_low)


def test_inspect_reports_what_delta_rank_keeps_per_matrix_and_per_layer(expo, tmp_path):
    sft, aligned = make_pair(tmp_path, dtype=torch.float32)
    run = expo("inspect", "--sft", sft, "--aligned", aligned, "--delta-rank", 2, "--json", "-q")
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    s, a = read_all(sft), read_all(aligned)
    merged = expo(
        "merge",
        "--sft",
        sft,
        "--aligned",
        aligned,
        "--alpha",
        1,
        "--delta-rank",
        2,
        "-o",
        tmp_path / "o",
        "--json",
        "-q",
    )
    from_merge = json.loads(merged.stdout)["delta_rank"]["energy_kept"]
    for t in report["tensors"]:
        if a[t["name"]].dim() != 2:
            assert t["energy_kept"] is None
            continue
        expected = svd_reference(s[t["name"]], a[t["name"]], 2, 0)[1]
        assert t["energy_kept"] == pytest.approx(expected, abs=2e-6)
        assert from_merge[t["name"]] == pytest.approx(t["energy_kept"], abs=2e-6)
    for group in report["groups"]:
        members = [t for t in report["tensors"] if t["layer"] == group["layer"] and t["kind"] == group["kind"]]
        matrices = [t for t in members if t["energy_kept"] is not None]
        if not matrices:
            assert group["energy_kept"] is None
            continue
        weights = [t["delta_norm"] ** 2 for t in matrices]
        expected = sum(w * t["energy_kept"] for w, t in zip(weights, matrices, strict=True)) / sum(weights)
        assert group["energy_kept"] == pytest.approx(expected)
    text = expo("inspect", "--sft", sft, "--aligned", aligned, "--delta-rank", 2, "-q")
    assert "kept at rank 2" in text.stdout.splitlines()[0]


def test_a_tune_run_folder_is_refused_for_another_rank_or_trajectory(expo, steered, workspace, tmp_path):
    """The responses depend on the rank and on every checkpoint of a trajectory: a run folder keeps one of each."""
    sft, aligned = steered
    run_dir = tmp_path / "run"
    first = expo("tune", *tune_args(workspace, "--sft", sft, "--aligned", aligned, "--alpha", "1", "--delta-rank", 2),
                 "--run-dir", run_dir)  # fmt: skip
    assert first.code == 0, first.stderr
    other = expo("tune", *tune_args(workspace, "--sft", sft, "--aligned", aligned, "--alpha", "1", "--delta-rank", 3),
                 "--run-dir", run_dir)  # fmt: skip
    assert other.code == 2 and "other settings" in other.stderr
    points = ["--trajectory", f"0={sft}", "--trajectory", f"1={aligned}", "--to-step", "2"]
    line_dir = tmp_path / "line"
    assert expo("tune", *tune_args(workspace, *points), "--run-dir", line_dir).code == 0
    moved = ["--trajectory", f"0={sft}", "--trajectory", f"2={aligned}", "--to-step", "4"]  # the same α, other steps
    again = expo("tune", *tune_args(workspace, *moved), "--run-dir", line_dir)
    assert again.code == 2 and "other settings" in again.stderr


def test_verify_refuses_what_it_cannot_recompute_and_checks_a_two_point_line(expo, tmp_path):
    sft, aligned = make_pair(tmp_path)
    low, line = tmp_path / "low", tmp_path / "line"
    assert (
        expo("merge", "--sft", sft, "--aligned", aligned, "--alpha", 1, "--delta-rank", 2, "-o", low, "-q").code == 0
    )
    run = expo("verify", low, "--sft", sft, "--aligned", aligned)
    assert run.code == 2 and "--delta-rank" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    points = ["--trajectory", f"0={sft}", "--trajectory", f"1={aligned}", "--to-step", 2.5]
    assert expo("merge", *points, "-o", line, "-q").code == 0
    assert expo("verify", line, "--sft", sft, "--aligned", aligned, "-q").code == 0  # ExPO at α = 1.5


def test_the_plan_states_the_memory_a_trajectory_and_a_rank_add(expo, tmp_path):
    paths = trajectory(tmp_path, torch.bfloat16, steps=(0, 10, 20))
    plain = json.loads(expo("merge", "--sft", paths[0], "--aligned", paths[-1], "--alpha", 1, "-o", tmp_path / "a",
                            "--dry-run", "--json", "--streams", 1).stdout)  # fmt: skip
    line = json.loads(expo("merge", *specs(paths, (0, 10, 20)), "--to-step", 40, "-o", tmp_path / "b", "--dry-run",
                           "--json", "--streams", 1).stdout)  # fmt: skip
    low = json.loads(expo("merge", "--sft", paths[0], "--aligned", paths[-1], "--alpha", 1, "--delta-rank", 2, "-o",
                          tmp_path / "c", "--dry-run", "--json", "--streams", 1).stdout)  # fmt: skip
    from expo_cli.constants import CHUNK_ELEMENTS

    assert line["peak_memory"] - plain["peak_memory"] == (3 + 4) * CHUNK_ELEMENTS * 4
    largest = max(t.numel() for t in read_all(paths[-1]).values() if t.dim() == 2)
    assert low["peak_memory"] - plain["peak_memory"] == 5 * largest * 4


def test_both_ends_of_the_line_read_each_block_of_each_checkpoint_once_and_keep_only_that_block(tmp_path):
    """Memory is k blocks whatever the tensor count: the second view reuses the block the first one read, and the
    next block replaces it."""
    from expo_cli.inputs.checkpoint import load_checkpoint
    from expo_cli.inputs.trajectory import Trajectory
    from expo_cli.trajectory import parse_trajectory

    paths = trajectory(tmp_path, torch.float32, steps=(0, 10, 20))
    milestones = parse_trajectory([f"{s}={p}" for s, p in zip((0, 10, 20), paths, strict=True)])
    reads: list[tuple[str, str]] = []

    class Counted:
        def __init__(self, checkpoint):
            self.checkpoint = checkpoint

        def __getattr__(self, name):
            return getattr(self.checkpoint, name)

        def __enter__(self):
            self.checkpoint.__enter__()
            return self

        def __exit__(self, *exc):
            self.checkpoint.__exit__(*exc)

        def flat(self, info, start, stop):
            reads.append((str(self.checkpoint.path), info.name))
            return self.checkpoint.flat(info, start, stop)

    line = Trajectory(milestones, [Counted(load_checkpoint(p, "aligned")) for p in paths])
    first, last = line.at(0), line.at(20)
    with first, last:
        for info in last.tensors.values():
            a, b = first.flat(info, 0, info.numel), last.flat(info, 0, info.numel)
            assert line._kept.block[0] == (info.name, 0, info.numel)  # the one block kept
            assert not torch.equal(a, b)
    assert len(reads) == 3 * len(last.tensors) and len(set(reads)) == len(reads)


def test_a_job_array_part_of_another_trajectory_or_rank_is_refused(expo, tmp_path):
    paths = trajectory(tmp_path, torch.bfloat16)
    out = tmp_path / "out"
    common = ["--to-step", 50, "--max-shard-size", "20KB", "-q", "-o", out]
    assert expo("merge", *specs(paths), *common, "--part", "1/2").code == 0
    other = [*specs([paths[0], paths[2], paths[1], paths[3]], (0, 10, 20, 30))]  # middle checkpoints swapped
    run = expo("merge", *other, *common, "--part", "2/2")
    assert run.code == 2 and "another part planned a different merge" in run.stderr
    run = expo("merge", *specs(paths), *common, "--part", "2/2", "--delta-rank", 2)
    assert run.code == 2 and "another part planned a different merge" in run.stderr
    assert expo("merge", *specs(paths), *common, "--part", "2/2").code == 0 and out.is_dir()


def test_a_trajectory_of_hub_branches_is_the_trajectory_of_the_same_folders(expo, tmp_path, hub, token):
    """RELEX publishes one branch per step: `org/run@step_N` is read at that branch, validated from its headers
    first like any Hub input, and gives the bytes of the same checkpoints read locally."""
    from helpers import files_of

    paths = trajectory(tmp_path, torch.bfloat16, steps=(0, 10, 20))
    hub.create("org/traj-run", files_of(paths[0]))
    repo = hub.repos["org/traj-run"]
    for step, path in zip((0, 10, 20), paths, strict=True):
        repo.refs[f"step_{step}"] = repo.commit(files_of(path), repo.refs["main"], f"step {step}")
    remote, local = tmp_path / "remote", tmp_path / "local"
    points = [a for s in (0, 10, 20) for a in ("--trajectory", f"{s}=org/traj-run@step_{s}")]
    run = expo("merge", *points, "--to-step", 40, "-o", remote, "-q")
    assert run.code == 0, run.stderr
    assert expo("merge", *specs(paths, (0, 10, 20)), "--to-step", 40, "-o", local, "-q").code == 0
    two_point = tmp_path / "two-point"
    assert expo("merge", "--sft", paths[0], "--aligned", paths[2], "--alpha", 1, "-o", two_point, "-q").code == 0
    assert weights_of(local) != weights_of(two_point)  # the middle branch counts
    assert weights_of(remote) == weights_of(local)
    recorded = json.loads((remote / "config.json").read_text())["expo"]["trajectory"]["checkpoints"]
    assert [c["checkpoint"] for c in recorded] == [f"org/traj-run@step_{s}" for s in (0, 10, 20)]
    missing = expo(
        "merge", *points[:4], "--trajectory", "20=org/traj-run@step_99", "--to-step", 40, "-o", tmp_path / "x"
    )
    assert missing.code != 0 and "step_99" in missing.stderr and not (tmp_path / "x").exists()


def test_a_sweep_of_steps_reads_the_checkpoints_once_and_writes_what_single_merges_write(expo, tmp_path):
    paths = trajectory(tmp_path, torch.bfloat16, steps=(0, 10, 20))
    sweep = tmp_path / "sweep"
    run = expo("merge", *specs(paths, (0, 10, 20)), "--to-step", "40,80", "-o", sweep, "--json", "-q")
    assert run.code == 0, run.stderr
    assert [r["trajectory"]["to_step"] for r in json.loads(run.stdout)] == [40, 80]
    assert sorted(p.name for p in sweep.iterdir()) == ["step-40", "step-80"]
    assert weights_of(sweep / "step-40") != weights_of(sweep / "step-80")
    for step in (40, 80):
        single = tmp_path / f"single-{step}"
        assert expo("merge", *specs(paths, (0, 10, 20)), "--to-step", step, "-o", single, "-q").code == 0
        assert weights_of(sweep / f"step-{step}") == weights_of(single)
    card = (sweep / "step-80" / "README.md").read_text()
    assert "model_name: step-20-expo-step-80" in card


@pytest.mark.parametrize(
    "settings", [{"aligned_vocab": 100}, {"sft_tied": True, "aligned_tied": False}], ids=["grown-vocab", "tied-sft"]
)
def test_delta_rank_on_a_grown_vocabulary_and_an_untied_head(expo, tmp_path, settings):
    """The update of the rows both have is low-ranked; rows the aligned model added are its own; an aligned head
    untied from the SFT embedding is paired with that embedding, as ExPO pairs them."""
    sft, aligned = make_pair(tmp_path, dtype=torch.float32, **settings)
    out = tmp_path / "out"
    run = expo("merge", "--sft", sft, "--aligned", aligned, "--alpha", 1, "--delta-rank", 2, "-o", out, "--json", "-q")
    assert run.code == 0, run.stderr
    merged, s, a = read_all(out), read_all(sft), read_all(aligned)
    embedding = "model.embed_tokens.weight"
    pairs = {embedding: embedding, "lm_head.weight": "lm_head.weight" if "lm_head.weight" in s else embedding}
    for name, sft_name in pairs.items():
        rows = s[sft_name].shape[0]
        ref, _, largest = svd_reference(s[sft_name], a[name][:rows], 2, 1)
        bound = 4 * (s[sft_name].double().abs() + ref.abs()).reshape(-1) + 1.5 * min(ref.shape) * largest
        assert_close_to(merged[name][:rows], ref.reshape(-1), bound, name)
        assert torch.equal(merged[name][rows:], a[name][rows:])  # grown rows: the aligned model's
    assert set(json.loads(run.stdout)["delta_rank"]["energy_kept"]) >= set(pairs)
    if "aligned_vocab" in settings:  # any block of the grown rows, not only those the merge's walk asks for
        from expo_cli.core.pairing import pair_tensors
        from expo_cli.inputs.checkpoint import load_checkpoint
        from expo_cli.inputs.lowrank import LowRankUpdate

        before, after = load_checkpoint(sft, "sft"), load_checkpoint(aligned, "aligned")
        tensors = pair_tensors(before, after, None).tensors
        source = LowRankUpdate(before, after, 2, tensors)
        (t,) = [t for t in tensors if t.name == embedding]
        with before, source:  # the blocks are views of the mapped files: compared while they are open
            tail = source.flat(t.aligned, t.shared + t.shape[1], t.numel).clone()
            head = source.flat(t.aligned, 0, t.shape[1]).clone()
        assert torch.equal(tail, a[embedding].reshape(-1)[t.shared + t.shape[1] :])
        assert not torch.equal(head, a[embedding].reshape(-1)[: t.shape[1]])  # a shared row: low-ranked


def test_a_rank_below_one_and_a_vllm_tune_are_refused_in_one_line(expo, steered, workspace):
    sft, aligned = steered
    cases = {
        "--delta-rank 0: must be at least 1": expo("inspect", "--sft", sft, "--aligned", aligned, "--delta-rank", 0),
        "need --backend transformers": expo(
            "tune", *tune_args(workspace, "--sft", sft, "--aligned", aligned, "--delta-rank", 2), "--backend", "vllm"
        ),
    }
    for message, run in cases.items():
        assert run.code == 2 and message in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
