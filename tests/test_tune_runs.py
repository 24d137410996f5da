"""expo tune's run folder: a run killed in the middle of a candidate resumes to exactly the uninterrupted result,
generating only what was missing; a changed setting is refused (or started fresh); saved responses are re-judged
without generating (--rescore)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from expo_cli.tuning.objectives.rewards import BatchScores
from helpers import steered_pair


def arguments(steered, workspace: Path, run_dir: Path, *extra: object) -> list[str]:
    sft, aligned = steered
    args = ["tune", "--sft", sft, "--aligned", aligned, "--prompts", workspace / "prompts.jsonl"]
    args += ["--reward-fn", f"{workspace / 'grader.py'}:w7_share", "--alpha", "0.5,2", "--holdout", "0.5"]
    args += ["--max-new-tokens", "8", "--temperature", "1", "--batch-size", "4", "--json", "-q", "--run-dir", run_dir]
    return [str(a) for a in (*args, *extra)]


def expo_process(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "expo_cli", *args], capture_output=True, text=True, timeout=600)


def comparable(report: dict) -> dict:
    """The result without what only says how it was computed: timings and how much came from the run folder."""
    return {k: v for k, v in report.items() if k not in ("timing", "run")}


def test_a_run_killed_mid_candidate_resumes_to_the_uninterrupted_result(steered, workspace):
    run_dir = workspace / "run"
    # 12 selection prompts in batches of 4: killed while scoring α = 0.5's second batch (or its third, when every
    # response of the second equals one scored before and needs no call).
    generations = run_dir / "generations" / "selection"
    (workspace / "kill-when").write_text(str(generations / "alpha=0.5.jsonl"))
    killed = expo_process(arguments(steered, workspace, run_dir))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    made = len((generations / "alpha=0.5.jsonl").read_text().splitlines())
    (rewards,) = run_dir.glob("rewards/*/selection/alpha=0.5.jsonl")
    assert made in (2, 3) and len(rewards.read_text().splitlines()) == made - 1  # a half-done candidate
    assert not (generations / "alpha=2.jsonl").exists()
    assert not (workspace / "kill-when").exists()  # the grader removed it as it killed itself

    scored = workspace / "scored.log"
    before = set(scored.read_text().splitlines())
    scored.unlink()
    resumed = expo_process(arguments(steered, workspace, run_dir))
    assert resumed.returncode == 0, resumed.stderr
    after = set(scored.read_text().splitlines())
    assert before and after, "both runs scored something"
    assert not before & after, "a response scored before the kill scored again"
    report = json.loads(resumed.stdout)
    total = 3 * 12 + 2 * 12  # three candidates on the selection prompts, α = 0 and the choice on the held-out ones
    assert report["run"]["reused"] == 12 + 4 * made and report["run"]["generated"] == total - 12 - 4 * made
    # α = 0's selection responses were all in the run folder: the model was not even set to it
    assert report["timing"]["selection:0"]["update_seconds"] == 0.0
    assert report["timing"]["selection:0.5"]["update_seconds"] > 0.0  # half of it was left to generate

    uninterrupted = expo_process(arguments(steered, workspace, workspace / "other"))
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    whole = json.loads(uninterrupted.stdout)
    assert whole["run"] == {"dir": str(workspace / "other"), "generated": total, "reused": 0}
    assert comparable(report) == comparable(whole)
    assert report["confirmation"]["prompts"] == 12 and report["alpha"] == whole["alpha"]


def test_a_changed_setting_is_refused_and_fresh_starts_again(expo, steered, workspace):
    run_dir = workspace / "run"
    first = expo(*arguments(steered, workspace, run_dir, "--limit", "8", "--holdout", "0"))
    assert first.code == 0, first.stderr
    changed = expo(*arguments(steered, workspace, run_dir, "--limit", "8", "--holdout", "0", "--max-new-tokens", "9"))
    assert changed.code == 2
    assert changed.stderr.strip().splitlines()[-1] == (
        "Error: --run-dir run: holds a run with other settings (decoding.max_new_tokens: 8 → 9); pass --fresh to "
        "start it again, or another --run-dir"
    )
    sampled = expo(*arguments(steered, workspace, run_dir, "--limit", "8", "--holdout", "0", "--no-chat-template"))
    assert sampled.code == 2 and "encoded_prompts" in sampled.stderr  # the same texts, other tokens: another key
    sampled = expo(*arguments(steered, workspace, run_dir, "--limit", "9", "--holdout", "0"))
    assert sampled.code == 2 and "prompts" in sampled.stderr  # another sample of prompts: another key
    fresh = expo(
        *arguments(steered, workspace, run_dir, "--limit", "8", "--holdout", "0", "--max-new-tokens", "9", "--fresh")
    )
    assert fresh.code == 0, fresh.stderr
    assert (
        json.loads(fresh.stdout)["run"]["reused"] == 0 and json.loads(fresh.stdout)["decoding"]["max_new_tokens"] == 9
    )
    (workspace / "stranger").mkdir()
    (workspace / "stranger" / "notes.txt").write_text("mine")
    refused = expo(*arguments(steered, workspace, workspace / "stranger"))
    assert refused.code == 2 and "is not an expo tune run folder" in refused.stderr
    assert (workspace / "stranger" / "notes.txt").read_text() == "mine"


def test_rescore_judges_the_saved_responses_with_another_reward_without_generating(expo, steered, workspace):
    run_dir = workspace / "run"
    common = ("--limit", "8", "--holdout", "0", "--search")
    first = expo(*arguments(steered, workspace, run_dir, *common))
    assert first.code == 0, first.stderr
    original = json.loads(first.stdout)
    assert original["search"]["budget"] == 3 + 4  # --search without --budget: the grid and four more
    args = arguments(steered, workspace, run_dir, *common, "--rescore")
    args[args.index(f"{workspace / 'grader.py'}:w7_share")] = f"{workspace / 'grader.py'}:length"
    rescored = expo(*args)
    assert rescored.code == 0, rescored.stderr
    report = json.loads(rescored.stdout)
    assert report["run"]["generated"] == 0 and report["reward"] == "grader.py:length"
    for candidate in report["candidates"]:  # the reward is now the length in words of the very responses kept
        kept = (run_dir / "generations" / "selection" / f"alpha={float(candidate['alpha'])!r}.jsonl").read_text()
        words = [len(r[2].split()) for line in kept.splitlines() for r in json.loads(line)["responses"]]
        assert candidate["reward"]["estimate"] == pytest.approx(sum(words) / len(words))
    assert set(report["evaluated_order"]) <= set(original["evaluated_order"])
    stopped = report["search"]["stopped"]
    if stopped.startswith("rescore: "):  # the search asked for an α the first run never generated
        assert float(stopped.split("α=")[1].split()[0]) not in original["evaluated_order"]
    bigger = arguments(steered, workspace, run_dir, "--limit", "8", "--holdout", "0", "--rescore")
    bigger[bigger.index("0.5,2")] = "0.5,2,3"
    missing = expo(*bigger)
    assert missing.code == 2 and "--rescore: α=3: 2 of 2 batch(es) never generated (selection)" in missing.stderr


def test_a_line_cut_short_by_a_crash_is_dropped_and_cut_off_by_the_next_append(tmp_path):
    from expo_cli.tuning.backends.generation import Response
    from expo_cli.tuning.runs.runfolder import RunFolder

    folder = RunFolder.open(tmp_path / "run", {"k": 1}, {"reward_fn": "f"})
    first = [Response(0, 0, "w9 w10", 2, "stop"), Response(1, 0, "w11", 1, "length")]
    folder.add_generation("selection", 0.5, 0, first)
    folder.add_rewards("selection", 0.5, 0, BatchScores([0.25, 0.5], {1}, {0}))
    path = tmp_path / "run" / "generations" / "selection" / "alpha=0.5.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"batch": 1, "responses": [[2, 0, "w1')  # killed while appending batch 1
    folder.close()
    again = RunFolder.open(tmp_path / "run", {"k": 1}, {"reward_fn": "f"})
    assert again.generations("selection", 0.5) == {0: first}
    assert path.read_bytes() == whole + b'{"batch": 1, "responses": [[2, 0, "w1'  # a reader changes nothing
    assert again.rewards("selection", 0.5) == {0: BatchScores([0.25, 0.5], {1}, {0})}
    second = [Response(2, 0, "w12", 1, "stop")]
    again.add_generation("selection", 0.5, 1, second)  # the writer cuts the torn line off, then appends
    assert path.read_bytes().startswith(whole) and len(path.read_bytes().splitlines()) == 2
    assert again.generations("selection", 0.5) == {0: first, 1: second}
    assert again.rewards("confirmation", 0.5) == {} and again.generations("selection", 2.0) == {}
    again.close()
    other_reward = RunFolder.open(tmp_path / "run", {"k": 1}, {"reward_fn": "g"})
    assert other_reward.rewards("selection", 0.5) == {} and other_reward.generations("selection", 0.5) == {
        0: first,
        1: second,
    }


def test_a_run_folder_in_use_is_refused_and_released_when_done(tmp_path):
    from expo_cli.errors import UsageError
    from expo_cli.tuning.runs.runfolder import RunFolder

    first = RunFolder.open(tmp_path / "run", {"k": 1}, {"reward_fn": "f"})
    with pytest.raises(UsageError, match="another expo tune is using it"):
        RunFolder.open(tmp_path / "run", {"k": 1}, {"reward_fn": "f"})
    with pytest.raises(UsageError, match="another expo tune is using it"):
        RunFolder.open(tmp_path / "run", {"k": 1}, {"reward_fn": "f"}, fresh=True)  # never emptied under a run
    assert (tmp_path / "run" / "run.json").is_file()
    first.close()
    with RunFolder.open(tmp_path / "run", {"k": 1}, {"reward_fn": "f"}, fresh=True) as again:
        assert again.generations("selection", 0.0) == {}
        with pytest.raises(UsageError, match="another expo tune is using it"):  # emptied, its lock kept and held
            RunFolder.open(tmp_path / "run", {"k": 1}, {"reward_fn": "f"})
    with pytest.raises(UsageError, match="other settings"):
        RunFolder.open(tmp_path / "run", {"k": 2}, {"reward_fn": "f"})
    RunFolder.open(tmp_path / "run", {"k": 1}, {"reward_fn": "f"}).close()  # a refusal released its lock


def test_parts_starting_at_once_on_an_empty_folder_all_open_it_and_one_key_is_recorded(tmp_path):
    """Job-array parts start together: none may take another's half-made folder for a foreign one, and of parts
    with different settings exactly one records its key (the others are refused, never mixed)."""
    import threading

    from expo_cli.errors import UsageError
    from expo_cli.tuning.runs.runfolder import RunFolder

    def race(folder: Path, keys: list[dict]) -> list[object]:
        start, outcomes = threading.Barrier(len(keys)), [None] * len(keys)

        def part(i: int) -> None:
            start.wait()
            try:
                RunFolder.open(folder, keys[i], {"reward_fn": "f"}, shared=True).close()
                outcomes[i] = "opened"
            except UsageError as err:
                outcomes[i] = str(err)

        threads = [threading.Thread(target=part, args=(i,)) for i in range(len(keys))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcomes

    for round in range(25):
        same = race(tmp_path / f"same{round}", [{"k": 1}] * 6)
        assert same == ["opened"] * 6, same
        keys = [{"k": i % 2} for i in range(6)]
        mixed = race(tmp_path / f"mixed{round}", keys)
        recorded = json.loads((tmp_path / f"mixed{round}" / "run.json").read_text())["key"]
        assert [o == "opened" for o in mixed] == [k == recorded for k in keys], mixed
        assert all("other settings" in o for o in mixed if o != "opened"), mixed


def test_close_alphas_never_share_a_file_and_a_foreign_or_corrupt_line_is_one_error(tmp_path):
    """0.1234561 and 0.1234564 (one "%g" apart from nothing) keep their own files; a line of another α copied into
    a file, or a complete line that is not JSON, is refused with the file and line named and --fresh suggested."""
    from expo_cli.errors import UsageError
    from expo_cli.tuning.backends.generation import Response
    from expo_cli.tuning.runs.runfolder import RunFolder

    folder = RunFolder.open(tmp_path / "run", {"k": 1}, {"reward_fn": "f"})
    near, other = 0.1234561, 0.1234564
    folder.add_generation("selection", near, 0, [Response(0, 0, "near", 1, "stop")])
    folder.add_generation("selection", other, 0, [Response(0, 0, "other", 1, "stop")])
    folder.add_generation("confirmation", near, 0, [Response(5, 0, "held\u2028out", 2, "stop")])
    assert folder.generations("selection", near) == {0: [Response(0, 0, "near", 1, "stop")]}
    assert folder.generations("selection", other) == {0: [Response(0, 0, "other", 1, "stop")]}
    assert folder.generations("confirmation", near) == {0: [Response(5, 0, "held\u2028out", 2, "stop")]}
    generations = tmp_path / "run" / "generations" / "selection"
    assert sorted(p.name for p in generations.iterdir()) == ["alpha=0.1234561.jsonl", "alpha=0.1234564.jsonl"]
    mine, theirs = generations / "alpha=0.1234561.jsonl", generations / "alpha=0.1234564.jsonl"
    mine.write_bytes(mine.read_bytes() + theirs.read_bytes())  # a line of another α, complete and valid
    with pytest.raises(UsageError) as caught:
        folder.generations("selection", near)
    assert str(caught.value) == (
        "--run-dir run: generations/selection/alpha=0.1234561.jsonl line 2: not a record of α=0.1234561 "
        "(selection); the folder was changed or mixed: pass --fresh to start the run again"
    )
    theirs.write_bytes(theirs.read_bytes() + b'{"alpha": 0.1234564, "part": "selection", "batch": 1, "respo}\n')
    with pytest.raises(UsageError, match=r"alpha=0\.1234564\.jsonl line 2: not valid JSON \(.*\); pass --fresh"):
        folder.generations("selection", other)
    folder.close()


def test_a_corrupt_run_folder_line_ends_tune_in_one_line(tmp_path, expo):
    """Through the CLI: exit 2, one line, no traceback, and --fresh starts the run again."""
    sft, aligned = steered_pair(tmp_path / "pair")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w8 w20\u2028w21\nw9 w22\n" * 3)  # U+2028 is inside a prompt, not between two
    grader = tmp_path / "grader.py"
    grader.write_text("def w7(prompt, response):\n    return response.split().count('w7')\n")
    args = ["tune", "--sft", sft, "--aligned", aligned, "--prompts", prompts, "--reward-fn", f"{grader}:w7"]
    args += ["--alpha", "1", "--max-new-tokens", "4", "--holdout", "0", "--run-dir", tmp_path / "run", "-q", "--json"]
    first = expo(*args)
    assert first.code == 0, first.stderr
    assert json.loads(first.stdout)["prompts"] == 6  # three times two prompts, none split at U+2028
    (kept,) = (tmp_path / "run" / "generations" / "selection").glob("alpha=1.0.jsonl")
    kept.write_bytes(kept.read_bytes() + b"{not json}\n")
    run = expo(*args)
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
    assert run.code == 2 and len(errors) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "generations/selection/alpha=1.0.jsonl line 2: not valid JSON" in errors[0] and "--fresh" in errors[0]
    assert expo(*args, "--fresh").code == 0


def test_ctrl_c_mid_candidate_says_where_the_work_is_kept_and_the_same_command_resumes(steered, workspace):
    run_dir = workspace / "run"
    generations = run_dir / "generations" / "selection"
    (workspace / "interrupt-when").write_text(str(generations / "alpha=0.5.jsonl"))
    stopped = expo_process(arguments(steered, workspace, run_dir))
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"Error: interrupted by SIGINT; the responses so far are kept in {run_dir}: the same command resumes"
    )
    resumed = expo_process([a for a in arguments(steered, workspace, run_dir) if a != "-q"])  # not quiet: it says
    assert resumed.returncode == 0, resumed.stderr
    assert f"run folder: {run_dir} (resuming: " in resumed.stderr and "are reused)" in resumed.stderr
    assert json.loads(resumed.stdout)["run"]["reused"] > 0


def test_a_batch_generated_but_not_scored_is_scored_on_resume_without_setting_the_model(expo, steered, workspace):
    """A run stopped between keeping a batch's responses and its rewards: the next run scores that batch from the
    kept responses, and the model is not set to that α (nothing is left to generate)."""
    run_dir = workspace / "run"
    first = expo(*arguments(steered, workspace, run_dir))
    assert first.code == 0, first.stderr
    (rewards,) = run_dir.glob("rewards/*/selection/alpha=0.5.jsonl")
    lines = rewards.read_text().splitlines(keepends=True)
    rewards.write_text("".join(lines[:-1]))  # the last batch's rewards never written
    scored = workspace / "scored.log"
    scored.unlink()
    again = expo(*arguments(steered, workspace, run_dir))
    assert again.code == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["run"]["generated"] == 0
    assert report["timing"]["selection:0.5"]["update_seconds"] == 0.0
    assert len(rewards.read_text().splitlines()) == len(lines)
    assert 0 < len(scored.read_text().splitlines()) <= 4  # that batch's answers only (fewer when seen before)
    before = json.loads(first.stdout)
    assert report["candidates"] == before["candidates"] and report["alpha"] == before["alpha"]
