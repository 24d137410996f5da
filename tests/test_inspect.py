"""`expo inspect`: the statistics against direct computation, the warnings, the JSON and the plot."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from helpers import make_pair, read_all, snapshot


def shown(share: float) -> str:
    """A share as the report prints it: three significant digits, trailing zeros kept (50.0%)."""
    return format(100 * share, "#.3g").rstrip(".") + "%"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("inspect"), dtype=torch.bfloat16, aligned_shards="30KB")


def test_statistics_match_a_direct_computation(expo, pair):
    sft, aligned = pair
    before = snapshot(sft), snapshot(aligned)
    run = expo("inspect", "--sft", sft, "--aligned", aligned, "--alpha", "0.5", "--json", "--quiet")
    assert run.code == 0, run.stderr
    assert (snapshot(sft), snapshot(aligned)) == before
    report = json.loads(run.stdout)
    s, a = read_all(sft), read_all(aligned)
    by_name = {t["name"]: t for t in report["tensors"]}
    assert by_name.keys() == a.keys()
    for name, row in by_name.items():
        x, y = s[name].double(), a[name].double()
        assert row["relative_change"] == pytest.approx(float((y - x).norm() / x.norm()), rel=1e-9)
        assert row["cosine"] == pytest.approx(float((x * y).sum() / (x.norm() * y.norm())), rel=1e-9)
        assert row["max_abs_delta"] == pytest.approx(float((y - x).abs().max()))
        rounded = (y + 0.5 * (y - x)).to(torch.bfloat16)
        assert row["survives"] == pytest.approx(float((rounded != a[name]).double().mean()), abs=0.02)
    total = math.sqrt(
        sum(float((a[n].double() - s[n].double()).square().sum()) for n in a)
        / sum(float(s[n].double().square().sum()) for n in a)
    )
    assert report["relative_change"] == pytest.approx(total, rel=1e-9)
    matrices = [n for n in a if a[n].dim() >= 2]  # the norm weights (near 1, barely moved) left out
    assert report["matrix_change"] == pytest.approx(
        math.sqrt(
            sum(float((a[n].double() - s[n].double()).square().sum()) for n in matrices)
            / sum(float(s[n].double().square().sum()) for n in matrices)
        ),
        rel=1e-9,
    )
    assert report["matrix_change"] > 2 * report["relative_change"]  # what the summary must not hide
    for g in report["groups"]:
        members = [t for t in report["tensors"] if (t["layer"], t["kind"]) == (g["layer"], g["kind"])]
        elements = sum(t["elements"] for t in members)
        assert g["survives"] == pytest.approx(sum(t["survives"] * t["elements"] for t in members) / elements)
    layers = {(g["layer"], g["kind"]) for g in report["groups"]}
    assert {(0, "attention"), (0, "mlp"), (0, "norms"), (1, "attention"), (None, "embeddings")} <= layers
    assert sum(g["share_of_change"] for g in report["groups"]) == pytest.approx(1.0)
    assert report["summary"].startswith(f"Alignment moved the weight matrices by {shown(report['matrix_change'])}")
    assert f"the whole model by {shown(report['relative_change'])}" in report["summary"]


def test_human_report(expo, pair):
    sft, aligned = pair
    run = expo("inspect", "--sft", sft, "--aligned", aligned, "--top", "3")
    assert run.code == 0, run.stderr
    assert "share of ‖Δ‖²" in run.stdout and "Most changed tensors" in run.stdout
    assert "Alignment moved the weight matrices by" in run.stdout.strip().splitlines()[-1]
    assert "survives at α=0.5" in run.stdout.splitlines()[0]
    assert "0000%" not in run.stdout  # three significant digits, not four decimals


def test_identical_models_are_flagged(tmp_path, expo, pair):
    _, aligned = pair
    twin = shutil.copytree(aligned, tmp_path / "twin")
    run = expo("inspect", "--sft", twin, "--aligned", aligned, "--quiet")
    assert run.code == 0 and "the two checkpoints are identical" in run.stderr


def test_a_different_base_is_flagged(tmp_path, expo):
    from helpers import build_model, llama_config, save

    sft = save(build_model(llama_config(), seed=5), tmp_path / "other", torch.bfloat16)
    _, aligned = make_pair(tmp_path / "p")
    run = expo("inspect", "--sft", sft, "--aligned", aligned, "--quiet")
    assert run.code == 0 and "--sft may not be the checkpoint --aligned was trained from" in run.stderr


def test_low_survival_suggests_float32(tmp_path, expo):
    sft, aligned = make_pair(tmp_path, dtype=torch.bfloat16)
    run = expo("inspect", "--sft", sft, "--aligned", aligned, "--alpha", "0.01", "--quiet")
    assert run.code == 0 and "consider --dtype float32" in run.stderr
    run = expo("inspect", "--sft", sft, "--aligned", aligned, "--alpha", "0.01", "--dtype", "float32", "--quiet")
    assert "consider --dtype float32" not in run.stderr


def test_plot_is_a_png_with_one_bar_per_layer_and_kind(tmp_path, expo, pair):
    from PIL import Image

    sft, aligned = pair
    png = tmp_path / "change.png"
    run = expo("inspect", "--sft", sft, "--aligned", aligned, "--plot", png, "--json", "--quiet")
    assert run.code == 0, run.stderr
    groups = json.loads(run.stdout)["groups"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 100
    import expo_cli
    from expo_cli.inspection import InspectResult, plot  # the count the plot reports equals the groups drawn

    result = expo_cli.inspect(sft, aligned, progress=False)
    assert isinstance(result, InspectResult)
    assert plot(result, tmp_path / "again.png") == len(groups) == len(result.groups)


def test_a_large_change_of_the_matrices_is_flagged_though_the_norm_weights_hide_it(tmp_path, expo, pair):
    """Norm weights near 1 dominate ‖θ_sft‖ and barely move: the whole-model ratio must not judge the pair."""
    from safetensors.torch import load_file, save_file

    sft, _ = pair
    moved = shutil.copytree(sft, tmp_path / "moved")
    generator = torch.Generator().manual_seed(0)
    for file in moved.glob("*.safetensors"):
        tensors = load_file(file)
        for name, t in tensors.items():
            if t.dim() >= 2:
                noise = torch.randn(t.shape, generator=generator) * t.float().std()
                tensors[name] = (t.float() + 0.3 * noise).to(t.dtype)
        save_file(tensors, file, metadata={"format": "pt"})
    run = expo("inspect", "--sft", sft, "--aligned", moved, "--json", "--quiet")
    report = json.loads(run.stdout)
    assert run.code == 0 and report["relative_change"] < 0.2 < report["matrix_change"]
    assert f"alignment changed the weight matrices by {shown(report['matrix_change'])}" in run.stderr
    assert "--sft may not be the checkpoint --aligned was trained from" in run.stderr


def test_the_summary_names_the_output_dtype_as_config_json_does(expo, pair):
    sft, aligned = pair
    for given, named in ((None, "bfloat16"), ("fp32", "float32"), ("float16", "float16")):
        extra = ["--dtype", given] if given else []
        run = expo("inspect", "--sft", sft, "--aligned", aligned, *extra, "--json", "--quiet")
        report = json.loads(run.stdout)
        assert report["dtype"] == named and report["summary"].endswith(f"change in {named}.")
