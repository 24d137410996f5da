"""Choosing α: sweeps in one read, per-tensor rules, and the dry-run plan."""

from __future__ import annotations

import json

import pytest
import torch

import expo_cli
from helpers import assert_merged, make_pair, read_all, snapshot


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("alpha"), dtype=torch.bfloat16, aligned_shards="30KB")


def test_sweep_outputs_equal_single_merges_bit_for_bit(tmp_path, expo, pair):
    sft, aligned = pair
    run = expo(
        "merge",
        "--sft",
        sft,
        "--aligned",
        aligned,
        "-o",
        tmp_path / "sweep",
        "--alpha",
        "0.1,0.3",
        "--alpha",
        "0.5",
        "--max-shard-size",
        "30KB",
    )
    assert run.code == 0, run.stderr
    outputs = [tmp_path / "sweep" / f"alpha-{a}" for a in ("0.1", "0.3", "0.5")]
    assert run.stdout.split() == [str(p.resolve()) for p in outputs]
    for alpha, out in zip((0.1, 0.3, 0.5), outputs, strict=True):
        single = expo_cli.merge(
            sft, aligned, tmp_path / f"single-{alpha}", alpha, max_shard_size="30KB", progress=False
        )
        a, b = read_all(out), read_all(single.output)
        assert a.keys() == b.keys() and all(torch.equal(a[k].view(torch.int16), b[k].view(torch.int16)) for k in a)
        config = json.loads((out / "config.json").read_text())
        assert config["expo"]["alpha"] == alpha and f"{alpha:g}·(θ_aligned" in (out / "README.md").read_text()
        assert_merged(out, sft, aligned, alpha)


def test_sweep_repeated_value_is_a_usage_error(tmp_path, expo, pair):
    sft, aligned = pair
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "s", "--alpha", "0.1,0.1")
    assert run.code == 2 and "repeated" in run.stderr and not (tmp_path / "s").exists()


def test_alpha_for_rules_first_match_wins(tmp_path, expo, pair):
    sft, aligned = pair
    rules = ["--alpha-for", "embed|lm_head=0", "--alpha-for", r"layers\.1\.=2", "--alpha-for", "layers=9"]
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "out", "--alpha", "0.5", *rules)
    assert run.code == 0, run.stderr
    merged, s, a = read_all(tmp_path / "out"), read_all(sft), read_all(aligned)
    for name, tensor in merged.items():
        expected_alpha = (
            0
            if ("embed" in name or "lm_head" in name)
            else 2
            if "layers.1." in name
            else 9
            if "layers" in name
            else 0.5
        )
        ref = (a[name].double() + expected_alpha * (a[name].double() - s[name].double())).to(tensor.dtype)
        assert (tensor.double() - ref.double()).abs().max() <= 2 * ref.double().abs().max() * 2**-8, name
        if expected_alpha == 0:
            assert torch.equal(tensor.view(torch.int16), a[name].view(torch.int16)), name
    rules = json.loads((tmp_path / "out" / "config.json").read_text())["expo"]["rules"]
    assert [r["rule"] for r in rules] == [
        "--alpha-for embed|lm_head=0",
        r"--alpha-for layers\.1\.=2",
        "--alpha-for layers=9",
    ]


def test_include_and_exclude(tmp_path, expo, pair):
    sft, aligned = pair
    run = expo(
        "merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "inc", "--alpha", "0.5", "--include", "mlp"
    )
    assert run.code == 0, run.stderr
    merged, a = read_all(tmp_path / "inc"), read_all(aligned)
    for name, tensor in merged.items():
        assert torch.equal(tensor.view(torch.int16), a[name].view(torch.int16)) == ("mlp" not in name), name
    run = expo(
        "merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "exc", "--alpha", "0.5", "--exclude", "norm"
    )
    assert run.code == 0, run.stderr
    merged = read_all(tmp_path / "exc")
    assert all(torch.equal(merged[n].view(torch.int16), a[n].view(torch.int16)) for n in merged if "norm" in n)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--alpha-for", "embd=0"], "--alpha-for embd=0: matches no tensor"),
        (["--exclude", "nothing_like_this"], "--exclude nothing_like_this: matches no tensor"),
        (["--alpha-for", "embed"], "write REGEX=VALUE"),
        (["--alpha-for", "(=1"], "is not a regular expression"),
        (["--alpha-for", "embed=inf"], "is not a finite number"),
    ],
)
def test_rule_errors_stop_before_any_work(tmp_path, expo, pair, args, message):
    sft, aligned = pair
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "out", "--alpha", "0.5", *args)
    assert run.code == 2 and message in run.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_writes_nothing_and_describes_the_plan(tmp_path, expo, pair):
    sft, aligned = pair
    before = snapshot(sft), snapshot(aligned), sorted(tmp_path.iterdir())
    run = expo(
        "merge",
        "--sft",
        sft,
        "--aligned",
        aligned,
        "-o",
        tmp_path / "out",
        "--alpha",
        "0.3,0.6",
        "--dry-run",
        "--json",
        "--exclude",
        "norm",
        "--max-shard-size",
        "20KB",
    )
    assert run.code == 0, run.stderr
    assert (snapshot(sft), snapshot(aligned), sorted(tmp_path.iterdir())) == before
    plan = json.loads(run.stdout)
    assert plan["outputs"] == {"0.3": str(tmp_path / "out" / "alpha-0.3"), "0.6": str(tmp_path / "out" / "alpha-0.6")}
    assert plan["tensors"] == 21 and plan["extrapolated"] == 21
    tensors = read_all(aligned)
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    assert plan["bytes_read"] == 2 * stored
    assert len(plan["shards"]) > 1 and all(s["file"].startswith("model-") for s in plan["shards"])
    assert plan["disk_needed"] >= 2 * plan["bytes_written"] and plan["disk_free"] > 0 and plan["peak_memory"] > 0
    assert plan["alpha_groups"]["0.3"] == {"α=0": 5, "α=0.3": 16}
    assert plan["rules"] == [{"rule": "--exclude norm", "pattern": "norm", "alpha": 0.0, "tensors": 5}]
    human = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "out", "--alpha", "0.3", "--dry-run")
    assert human.code == 0 and "Disk:" in human.stdout and "Peak memory" in human.stdout
    assert sorted(tmp_path.iterdir()) == before[2]


def test_dry_run_still_refuses_what_a_run_would(tmp_path, expo, pair):
    sft, aligned = pair
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "out", "--alpha", "0.3", "--dry-run")
    assert run.code == 5 and "pass --force" in run.stderr
