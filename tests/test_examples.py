"""The README's first hour on the demo pair: `make demo`'s next steps, then the shipped tune example, its refusal
to write a gamed choice, --force, and verify, exactly as the README has them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo pair as `make demo` builds it (examples/make_tiny_pair.py, run as a script)."""
    root = tmp_path_factory.mktemp("demo")
    subprocess.run([sys.executable, str(EXAMPLES / "make_tiny_pair.py"), str(root)], check=True, capture_output=True)
    return root


def test_make_tiny_pair_help_explains_and_builds_nothing(tmp_path):
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_tiny_pair.py"), "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 1 and "Build a tiny SFT/aligned pair" in run.stderr and list(tmp_path.iterdir()) == []


def test_the_demo_ends_by_naming_its_output_and_the_next_commands(demo, expo):
    assert (
        expo("merge", "--sft", demo / "sft", "--aligned", demo / "aligned", "-o", demo / "expo", "--alpha", "0.5").code
        == 0
    )
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "check_output.py"), str(demo / "expo")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    last = run.stdout.strip().splitlines()[-4:]
    assert last[0] == f'The merged checkpoint is in {demo / "expo"}. Next (the README\'s "Try it on the demo pair"):'
    assert last[1].strip().startswith("source .venv/bin/activate")
    assert last[2].strip() == f"expo verify {demo / 'expo'} --sft {demo}/sft --aligned {demo}/aligned"
    assert last[3].strip().startswith(f"expo tune --sft {demo}/sft --aligned {demo}/aligned --prompts examples/demo")
    assert expo("verify", demo / "expo", "--sft", demo / "sft", "--aligned", demo / "aligned").code == 0


def readme_tune_arguments() -> list[str]:
    """The README's demo tune command, its continuation lines joined, without `expo tune` and the comment."""
    text = (ROOT / "README.md").read_text()
    start = text.index("expo tune --sft examples/out/sft --aligned examples/out/aligned --prompts examples/demo/")
    command = text[start : text.index("```", start)].split("#")[0].replace("\\\n", " ")
    return command.split()[2:]


def test_the_readme_tune_example_chooses_and_confirms_alpha_2_and_refuses_to_write_a_gamed_choice(
    demo, expo, monkeypatch
):
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the repository
    arguments = [a.replace("examples/out", str(demo)) for a in readme_tune_arguments()]
    assert arguments[-2:] == ["--report", f"{demo}/report.html"]
    common = [*arguments, "--run-dir", demo / "run", "--json"]
    refused = expo("tune", *common, "--output", demo / "tuned")
    assert refused.code == 8, refused.stderr
    report = json.loads(refused.stdout)
    assert report["alpha"] == 2.0 and report["confirmed"] and report["split"]["confirmation"] == 36
    assert "power: 84 selection and 36 held-out prompts, 3 candidate(s)" in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("Error: --output tuned not written: α=2 cuts ")
    assert (demo / "report.html").is_file() and not (demo / "tuned").exists()
    held = report["confirmation"]["stats"]  # the verdict in words is the held-out one, not the selection's
    after, before = held["reward"]["estimate"], held["reward"]["estimate"] - held["gain"]["estimate"]
    assert (
        f"On the 36 held-out prompts, α = 2 moved the mean reward from {before:.3g} to {after:.3g} and won "
        f"{held['win_rate']['estimate']:.0%} of them against α = 0."
    ) in (demo / "report.html").read_text()
    forced = expo("tune", *common, "--output", demo / "tuned", "--force")
    assert forced.code == 0, forced.stderr
    assert json.loads(forced.stdout)["run"]["generated"] == 0  # every answer reused from the run folder
    steps = forced.stderr[forced.stderr.index("\nNext:\n") :].strip().splitlines()[1:]
    assert [step.strip() for step in steps] == [
        "α = 2 is the largest tried: run the same expo tune with --alpha 2,4,8 (or --search) to see whether more "
        "helps",
        f"Check the output: expo verify {demo}/tuned --sft {demo}/sft --aligned {demo}/aligned",
        f"Publish it: expo push {demo}/tuned ORG/NAME",
    ]
    page = (demo / "report.html").read_text()  # the same steps, naming no local path
    assert "Check the output: expo verify tuned --sft sft --aligned aligned" in page and str(demo) not in page
    assert expo("verify", demo / "tuned", "--sft", demo / "sft", "--aligned", demo / "aligned").code == 0


def test_the_readme_push_of_the_tuned_demo_reaches_the_hub_byte_for_byte(demo, expo, hub, token, tmp_path):
    """The README's last step, against the test Hub: the tuned demo model, published and downloaded back."""
    from huggingface_hub import snapshot_download

    import expo_cli

    text = (ROOT / "README.md").read_text()
    line = next(li for li in text.splitlines() if li.startswith("expo push examples/out/tuned "))
    arguments = line.split("#")[0].replace("examples/out", str(demo)).split()[2:]
    expo_cli.merge(demo / "sft", demo / "aligned", demo / "tuned-for-push", 2.0, progress=False)
    arguments[0] = str(demo / "tuned-for-push")  # the README's output, made here without the tune's minutes
    run = expo("push", *arguments)
    assert run.code == 0, run.stderr
    repo = arguments[1]
    back = Path(snapshot_download(repo, cache_dir=tmp_path / "cache"))
    for file in (demo / "tuned-for-push").iterdir():
        assert (back / file.name).read_bytes() == file.read_bytes(), file.name


def readme_objective_commands() -> dict[str, list[str]]:
    """The README's one command per objective (its "Objectives" block), by what each scores with."""
    text = (ROOT / "README.md").read_text()
    block = text.split("#### Objectives:")[1].split("```bash\n")[1].split("```")[0]
    commands = [c.split() for c in block.replace("\\\n", " ").splitlines() if c.startswith("expo tune")]
    return {next(o for o in ("--guard", "--judge", "--task", "--reward-fn") if o in c): c[2:] for c in commands}


def test_the_readme_runs_one_command_per_objective(demo, expo, monkeypatch, tmp_path):
    from judge_server import Judge, serve

    monkeypatch.chdir(ROOT)  # the README's paths (the tasks' data files too) are relative to the repository
    commands = readme_objective_commands()
    assert sorted(commands) == ["--guard", "--judge", "--reward-fn", "--task"]
    judge = Judge(word="aligned")  # the demo's reward counts that word: the stub judge prefers it
    server = serve(judge)
    monkeypatch.setenv("EXPO_JUDGE_API_KEY", "sk-demo")
    stub = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        reports = {}
        for name, arguments in commands.items():
            arguments = [stub if a.startswith("https://api.openai.com") else a.replace("examples/out", str(demo))
                         for a in arguments]  # fmt: skip
            run = expo("tune", *arguments, "--run-dir", tmp_path / name.strip("-"), "--json")
            assert run.code == 0, (name, run.stderr)
            reports[name] = json.loads(run.stdout)
    finally:
        server.shutdown()
    assert reports["--reward-fn"]["objective"] == "reward" and reports["--task"]["objective"] == "task"
    assert reports["--task"]["prompts"] == 120  # 60 documents in each of the two tasks
    judged = reports["--judge"]["judge"]
    assert judged["calls"] == len(judge.asked) > 0 and judged["requests"] == len(judge.requests)
    assert reports["--guard"]["guard"]["tasks"] == "demo_choice (acc)"
    # the guard keeps the reward's choice when it admits it, and never chooses an α it excludes
    admitted = {c["alpha"]: c["admissible"] for c in reports["--guard"]["guard"]["candidates"]}
    assert admitted[reports["--guard"]["alpha"]]
    if admitted[reports["--reward-fn"]["alpha"]]:
        assert reports["--guard"]["alpha"] == reports["--reward-fn"]["alpha"]
