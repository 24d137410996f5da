"""expo tune split over processes: one process, worker processes and job-array parts (one killed mid-candidate and
run again) give the same result and the same output bytes; a part of other settings is refused, --finish before the
parts are done names what is missing, --status says who does what; the claims that keep processes apart across
hosts; the README's Slurm and Kubernetes examples run as written."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from expo_cli.tuning.objectives.rewards import Cached, RewardModel
from expo_cli.tuning.runs import claims as claiming
from expo_cli.tuning.runs.claims import Busy, Claims, LostClaim
from helpers import files_of, save_reward_model, word_tokenizer
from test_tune_runs import comparable, expo_process

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "examples" / "cluster"


def tune_args(steered, workspace: Path, where: str, *extra: object, alphas: str = "0.5,2") -> list[str]:
    """A grid of three candidates (α = 0, 0.5, 2) on 12 + 12 prompts; the run folder and --output in `where`."""
    sft, aligned = steered
    (workspace / where).mkdir(exist_ok=True)
    args = ["tune", "--sft", sft, "--aligned", aligned, "--prompts", workspace / "prompts.jsonl"]
    args += ["--reward-fn", f"{workspace / 'grader.py'}:w7_share", "--alpha", alphas, "--holdout", "0.5"]
    args += ["--max-new-tokens", "8", "--temperature", "1", "--batch-size", "4", "--json", "--force"]
    args += ["--run-dir", workspace / where / "run", "--output", workspace / where / "expo"]
    return [str(a) for a in (*args, *extra)]


def same_result(report: dict, reference: dict) -> None:
    """Equal but for timings, what came from the run folder and where the output was written."""
    report, reference = dict(report), dict(reference)
    written = [Path(r.pop("output")).name if "output" in r else None for r in (report, reference)]
    assert written[0] == written[1] in ("expo", None)
    mine, theirs = comparable(report), comparable(reference)
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert mine[key] == theirs[key], key


def test_one_process_workers_and_array_parts_give_the_same_result_and_bytes(steered, workspace):
    single = expo_process(tune_args(steered, workspace, "one"))
    assert single.returncode == 0, single.stderr
    reference = json.loads(single.stdout)
    assert reference["alpha"] != 0 and reference["confirmed"]  # a run whose output is written
    rewards = {c["alpha"]: c["reward"]["estimate"] for c in reference["candidates"]}
    assert len(set(rewards.values())) == 3  # the candidates answer differently: equal results below are no accident
    expected = files_of(workspace / "one" / "expo")

    workers = expo_process(tune_args(steered, workspace, "workers", "--data-parallel", "2"))
    assert workers.returncode == 0, workers.stderr
    same_result(json.loads(workers.stdout), reference)
    assert files_of(workspace / "workers" / "expo") == expected
    assert re.search(r"worker [12]/2: α=", workers.stderr)  # the workers did the grid, and said so
    assert "worker 1/2: few prompts" not in workers.stderr  # what the parent said, said once
    for file in (workspace / "workers" / "run").glob("generations/selection/*.jsonl"):
        assert len(file.read_text().splitlines()) == 3, f"{file.name}: each batch made once, by one worker"

    # Part 2 of 3 (α = 0.5) is killed in the middle of its candidate, then parts 1 and 3 run: neither finishes.
    run = workspace / "parts" / "run"
    (workspace / "kill-when").write_text(str(run / "generations" / "selection" / "alpha=0.5.jsonl"))
    killed = expo_process(tune_args(steered, workspace, "parts", "--part", "2/3"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    for index in (1, 3):
        part = expo_process(tune_args(steered, workspace, "parts", "--part", f"{index}/3"))
        assert part.returncode == 0, part.stderr
        assert json.loads(part.stdout) == {"part": f"{index}/3", "finished": False}
    assert not (workspace / "parts" / "expo").exists()

    status = json.loads(expo_process(["tune", "--status", str(run)]).stdout)
    states = {(c["part"], c["alpha"]): c["state"] for c in status["candidates"]}
    assert states == {("selection", 0.0): "done", ("selection", 0.5): "stopped", ("selection", 2.0): "done"}
    assert status["plan"]["alphas"] == [0.0, 0.5, 2.0] and status["plan"]["parts"] == 3 and not status["finished"]

    early = expo_process(tune_args(steered, workspace, "parts", "--finish"))
    assert early.returncode == 5 and "α=0.5 (part 2/3) not evaluated yet" in early.stderr, early.stderr

    # Part 2 run again takes over the dead process's claim, completes the grid and finishes the run.
    rerun = expo_process(tune_args(steered, workspace, "parts", "--part", "2/3"))
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    same_result(report, reference)
    assert report["run"]["reused"] > 0  # what the killed process made was kept
    assert files_of(workspace / "parts" / "expo") == expected
    status = json.loads(expo_process(["tune", "--status", str(run)]).stdout)
    assert status["finished"] and {c["state"] for c in status["candidates"]} == {"done"}
    assert not list((run / "claims").rglob("*.json"))  # every claim released

    late = expo_process(tune_args(steered, workspace, "parts", "--part", "3/3"))  # a part requeued after the end
    assert late.returncode == 0 and json.loads(late.stdout)["finished"] is False, late.stderr


def test_a_split_run_refuses_options_that_would_spoil_the_others_work(expo, steered, workspace):
    for extra, message in (
        (["--part", "1/2", "--fresh"], "--fresh would delete the other processes' work"),
        (["--finish", "--part", "1/2"], "--finish runs in one process"),
        (["--part", "3/2"], "part 3 of 2 does not exist"),
        (["--data-parallel", "0"], "--data-parallel 0: must be at least 1"),
        (["--data-parallel", str(len(os.sched_getaffinity(0)) + 1)], "a worker needs one at least"),
    ):
        refused = expo(*tune_args(steered, workspace, "refused", *extra))
        assert refused.code == 2, (extra, refused.stderr)
        assert message in refused.stderr and "Traceback" not in refused.stderr
    args = tune_args(steered, workspace, "refused", "--part", "1/2")
    at = args.index("--run-dir")
    refused = expo(*args[:at], *args[at + 2 :])  # in the cache of this host alone
    assert refused.code == 2 and "--part needs --run-dir, a folder on storage every part" in refused.stderr
    assert not (workspace / "refused" / "run" / "generations").exists()
    # a part of another grid, on a run folder a part of this grid has planned: refused before generating anything
    first = expo(*tune_args(steered, workspace, "refused", "--part", "2/2"))  # α = 0.5 only
    assert first.code == 0 and json.loads(first.stdout) == {"part": "2/2", "finished": False}, first.stderr
    other = expo(*tune_args(steered, workspace, "refused", "--part", "1/2", alphas="0.5,3"))
    assert other.code == 2, other.stderr
    assert "another process of this run evaluates another grid (alphas)" in other.stderr
    made = sorted(f.name for f in (workspace / "refused" / "run").glob("generations/*/*.jsonl"))
    assert made == ["alpha=0.5.jsonl"]
    status = expo("tune", "--status", workspace)  # a folder that is no run folder
    assert status.code == 2 and status.stdout == "" and "not an expo tune run folder" in status.stderr


def _claim_file(root: Path, name: str, number: int, host: str, pid: int, started: float, age: float) -> Path:
    folder = root / claiming.FOLDER / name
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"{number:06d}.json"
    namespace = claiming._namespace()
    file.write_text(json.dumps({"host": host, "namespace": namespace, "pid": pid, "started": started, "token": "x"}))
    moment = time.time() - age
    os.utime(file, (moment, moment))
    return file


def test_a_claim_held_by_a_live_process_is_busy_and_a_dead_ones_is_taken_over(tmp_path):
    here = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        started = claiming._process_start(live.pid)
        _claim_file(tmp_path, "selection/alpha=0.5", 0, here, live.pid, started, age=1000)
        with pytest.raises(Busy, match=f"pid {live.pid}"):  # on this host: alive whatever its heartbeat
            Claims(tmp_path).take("selection/alpha=0.5")
        _claim_file(tmp_path, "selection/alpha=1", 0, here, live.pid, started + 1, age=0)  # its PID, reused
        _claim_file(tmp_path, "selection/alpha=2", 0, here, int(dead.stdout), 1.0, age=0)  # ended
        _claim_file(tmp_path, "selection/alpha=3", 4, "elsewhere", 1, 1.0, age=claiming.STALE + 5)  # silent
        _claim_file(tmp_path, "selection/alpha=4", 0, "elsewhere", 1, 1.0, age=5)  # beat 5 s ago
        mine = Claims(tmp_path)
        for name, number in (("alpha=1", 1), ("alpha=2", 1), ("alpha=3", 5)):
            claim = mine.take(f"selection/{name}")
            assert claim.file.name == f"{number:06d}.json" and claim.held()
            assert [f.name for f in claim.file.parent.iterdir()] == [claim.file.name]  # the dead one's removed
        with pytest.raises(Busy, match="host elsewhere pid 1"):
            mine.take("selection/alpha=4")
        mine.close()
        assert not list((tmp_path / claiming.FOLDER).rglob("0*.json"))[2:]  # only the two others' are left
    finally:
        live.kill()
        live.wait()


def test_of_four_takers_of_a_claim_exactly_one_gets_it_and_a_late_holder_learns_it_lost(tmp_path):
    def take(folder: Path, start: threading.Barrier, outcomes: list[str]) -> None:
        claims = Claims(folder)  # each its own token: the others' claims are a live holder's
        start.wait()
        try:
            claims.take("finish")
            outcomes.append("got")
        except Busy:
            outcomes.append("busy")

    for round_ in range(5):
        start, outcomes = threading.Barrier(4), []
        takers = [threading.Thread(target=take, args=(tmp_path / str(round_), start, outcomes)) for _ in range(4)]
        for taker in takers:
            taker.start()
        for taker in takers:
            taker.join()
        assert sorted(outcomes) == ["busy", "busy", "busy", "got"]

    held = Claims(tmp_path)
    claim = held.take("selection/alpha=0.5")
    held.check("selection/alpha=0.5")  # still its own
    moment = time.time() - claiming.STALE - 5
    # its heartbeat stopped (a stalled host): rewrite it as another host's, silent for longer than STALE
    claim.file.write_text(json.dumps({"host": "elsewhere", "namespace": "", "pid": 1, "started": 1, "token": "t"}))
    os.utime(claim.file, (moment, moment))
    Claims(tmp_path).take("selection/alpha=0.5")
    with pytest.raises(LostClaim, match="taken over by host"):
        held.check("selection/alpha=0.5")


def _commands(text: str) -> list[list[str]]:
    """The expo command lines of a Slurm script (continuation lines joined)."""
    joined = text.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.startswith("expo ")]


@pytest.mark.parametrize("name", ["merge.sbatch", "tune.sbatch", "merge-job.yaml", "tune-job.yaml"])
def test_the_cluster_examples_are_in_the_readme_and_run_as_written(name, steered, workspace, tmp_path):
    text = (CLUSTER / name).read_text()
    readme = (ROOT / "README.md").read_text()
    assert text.strip() in readme, f"the README shows examples/cluster/{name} as it is"
    if name.endswith(".yaml"):
        job = yaml.safe_load(text)
        spec = job["spec"]
        assert spec["completionMode"] == "Indexed" and spec["backoffLimitPerIndex"] >= 1
        assert spec["template"]["spec"]["restartPolicy"] == "Never"
        rules = {r["action"]: r for r in spec["podFailurePolicy"]["rules"]}
        assert set(range(2, 7)) <= set(rules["FailIndex"]["onExitCodes"]["values"])
        assert rules["Count"]["onExitCodes"]["values"] == [7]
        (container,) = spec["template"]["spec"]["containers"]
        assert rules["FailIndex"]["onExitCodes"]["containerName"] == container["name"]
        command = container["command"]
        count = spec["completions"]
        environments = [{"JOB_COMPLETION_INDEX": str(i)} for i in range(count)]
    else:
        (command,) = _commands(text)
        low, high = map(int, re.search(r"--array=(\d+)-(\d+)", text).groups())
        count = high - low + 1
        environments = [
            {"SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_MIN": str(low), "SLURM_ARRAY_TASK_COUNT": str(count)}
            for i in range(low, high + 1)
        ]
    assert command[0] == "expo" and command[command.index("--part") + 1] == "auto"
    # /shared is the test's folder: the tiny pair, the prompts and a grader
    shared = tmp_path / "shared"
    sft, aligned = steered
    shared.mkdir()
    (shared / "sft").symlink_to(sft)
    (shared / "dpo").symlink_to(aligned)
    (shared / "prompts.jsonl").write_text((workspace / "prompts.jsonl").read_text())
    (shared / "graders.py").write_text("def score(prompt, response):\n    return response.split().count('w7')\n")
    local = [a.replace("/shared", str(shared)) for a in command[1:]]
    if command[1] == "tune":  # the tiny model's budget: short answers, a few prompts held out
        local += ["--max-new-tokens", "8", "--batch-size", "4", "--holdout", "0.5", "--force"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JOB_COMPLETION"))}
    tasks = [  # every index at once, as a scheduler starts them
        subprocess.Popen(
            [sys.executable, "-m", "expo_cli", *local, "-q", "--json"],
            env={**clean, **environment},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for environment in environments
    ]
    results = [(task.wait(timeout=600), *task.communicate()) for task in tasks]
    for code, _, stderr in results:
        assert code in (0, 8), stderr  # 8: a tune whose choice was not confirmed, told
    finishers = [(code, json.loads(out)) for code, out, _ in results if json.loads(out).get("finished") is not False]
    assert len(finishers) == 1  # exactly one index finishes, whichever ends last
    ((code, report),) = finishers
    if command[1] == "tune":
        assert report["alpha"] in (0.0, 0.1, 0.3, 0.5, 1.0)  # its choice, from its grid
        assert code == 8 or (shared / "dpo-expo" / "config.json").is_file()
    else:
        assert code == 0 and (shared / "dpo-expo" / "config.json").is_file()


def test_a_candidates_reward_model_scores_do_not_depend_on_what_the_process_scored_before(tmp_path):
    """A pair a reward model scored for another candidate, in another batch (other padding and batch size), is
    scored again in this candidate's batch for the run folder: the same scores kept whichever process, after
    whichever candidates, scores it. The statistics give the pair its first value: an answer two candidates share
    ties exactly."""
    torch.manual_seed(3)
    folder = save_reward_model(tmp_path / "rm", word_tokenizer())
    prompts = [f"w{8 + i} w{20 + i}" for i in range(8)]
    long = " ".join(f"w{9 + k % 30}" for k in range(40))
    first = [long if i % 2 else f"w{7 + i} w7" for i in range(8)]  # padded to 40 words
    second = [f"w{7 + i} w7" if i % 2 == 0 else "w7" for i in range(8)]  # shares the even ones, short
    alone = Cached(RewardModel(str(folder), "cpu", batch_size=8))
    alone.begin((0.5, "selection"))
    expected = alone.score(prompts, second)
    after = Cached(RewardModel(str(folder), "cpu", batch_size=8))
    after.begin((0.0, "selection"))
    earlier = after.score(prompts, first)
    after.begin((0.5, "selection"))
    assert after.score(prompts, second) == expected  # what the run folder keeps
    shared = (0, 2, 4, 6)
    assert [earlier[i] for i in shared] != [expected[i] for i in shared]  # the padding shows in the last bits
    used = after.canonical(prompts, second)
    assert [used[i] for i in shared] == [earlier[i] for i in shared]  # ties with α = 0's same answers
    assert [used[i] for i in (1, 3, 5, 7)] == [expected[i] for i in (1, 3, 5, 7)]


def test_with_a_reward_model_workers_give_the_one_process_result_and_shared_answers_tie(steered, workspace):
    """End to end with a reward model (the reward whose scores move with the batch): one process and two workers
    give the same result, and an answer α = 0.1 shares with α = 0 gets exactly α = 0's reward (a tie, not a win
    or a loss by the last bit; reward batches of 3 make the batches differ)."""
    torch.manual_seed(3)
    rm = save_reward_model(workspace / "rm", word_tokenizer())
    reports = {}
    for where, extra in (("one", []), ("workers", ["--data-parallel", "2"])):
        args = tune_args(steered, workspace, where, *extra, alphas="0.1")
        at = args.index("--reward-fn")
        args[at : at + 2] = ["--reward-model", str(rm), "--reward-batch-size", "3"]
        for option, value in (("--max-new-tokens", "12"), ("--batch-size", "8"), ("--holdout", "0")):
            args[args.index(option) + 1] = value
        saved = workspace / where / "responses.jsonl"
        run = expo_process([*args, "--save-responses", str(saved), "-q"])
        assert run.returncode in (0, 8), run.stderr
        reports[where] = json.loads(run.stdout)
        pairs: dict = {}
        for line in saved.read_text().splitlines():
            record = json.loads(line)
            pairs.setdefault((record["part"], record["prompt_index"], record["sample"]), {})[record["alpha"]] = record
        shared = [p for p in pairs.values() if len(p) == 2 and p[0.0]["response"] == p[0.1]["response"]]
        assert 0 < len(shared) < len(pairs)  # some answers shared, some not: the batches differ
        assert all(p[0.0]["reward"] == p[0.1]["reward"] for p in shared)
    same_result(reports["workers"], reports["one"])
