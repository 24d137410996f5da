"""expo tune's other objectives on real tiny models: lm-eval tasks (the per-document scores lm-eval itself gives a
checkpoint merged at the same α), and a capability guard over them; the pairwise judge is in test_judge.py."""

from __future__ import annotations

import json
from pathlib import Path

import lm_eval  # in the test extra: never skipped
import pytest

from helpers import moving_pair, steered_pair, tiny_tasks


@pytest.fixture(scope="module")
def moving(tmp_path_factory) -> tuple[Path, Path]:
    return moving_pair(tmp_path_factory.mktemp("moving"))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict[str, Path]:
    return tiny_tasks(tmp_path_factory.mktemp("tasks"))


def records(path: Path) -> dict[float, dict[int, dict]]:
    """--save-responses, by α and document."""
    found: dict[float, dict[int, dict]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        found.setdefault(record["alpha"], {})[record["prompt_index"]] = record
    return found


def lm_eval_on(checkpoint: Path, task_files: list[Path]) -> dict[tuple[str, int], dict]:
    """lm-eval's own per-document results on a checkpoint folder, as a user runs it."""
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(checkpoint), "dtype": "float32"},
        tasks=[str(f) for f in task_files],
        task_manager=TaskManager(include_defaults=False),
        batch_size=8,
        device="cpu",
        log_samples=True,
        bootstrap_iters=0,
    )
    return {(task, s["doc_id"]): s for task, samples in results["samples"].items() for s in samples}


def with_targets(task: Path, targets: dict[int, str], folder: Path) -> Path:
    """A copy of the generative task whose document i has target `targets[i]` (its data file rewritten)."""
    data = task.parent / "docs.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    known = folder / "known.jsonl"
    known.write_text("".join(json.dumps({**row, "target": targets[i]}) + "\n" for i, row in enumerate(rows)))
    copy = folder / "tiny_known.yaml"
    copy.write_text(task.read_text().replace("task: tiny_gen", "task: tiny_known").replace(str(data), str(known)))
    return copy


def test_task_scores_equal_lm_evals_own_on_a_merged_checkpoint(expo, moving, tasks, tmp_path):
    """The generative task's targets are lm-eval's own greedy answers at α = 3 on even documents and another word on
    odd ones, so its exact_match at α = 3 is known: 1, 0, 1, 0, ..."""
    sft, aligned = moving
    merged = tmp_path / "merged"
    assert expo("merge", "--sft", sft, "--aligned", aligned, "--alpha", "3", "--output", merged).code == 0
    probe = lm_eval_on(merged, [tasks["gen"]])
    answers = {doc: sample["filtered_resps"][0].strip() for (_, doc), sample in probe.items()}
    targets = {doc: answer if doc % 2 == 0 else ("w9" if answer != "w9" else "w10") for doc, answer in answers.items()}
    files = [with_targets(tasks["gen"], targets, tmp_path), tasks["mc"]]
    saved = tmp_path / "responses.jsonl"
    run = expo("tune", "--sft", sft, "--aligned", aligned, "--task", ",".join(str(f) for f in files), "--alpha", "3",
               "--holdout", "0", "--run-dir", tmp_path / "run", "--save-responses", saved, "--json")  # fmt: skip
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["objective"] == "task" and report["reward"] == "tiny_known (exact_match),tiny_mc (acc)"
    found = records(saved)
    assert len(found[3.0]) == 80  # 40 documents of each task, all in the selection part, task by task by name
    assert [found[3.0][i]["reward"] for i in range(40)] == [float(i % 2 == 0) for i in range(40)]
    differs = [i for i in found[0.0] if found[0.0][i]["response"] != found[3.0][i]["response"]]
    assert differs  # the answers move with α
    own = lm_eval_on(merged, files)
    order = sorted(own, key=lambda k: (k[0], k[1]))  # expo numbers documents task by task, by name
    assert len(order) == len(found[3.0])
    for index, (task, doc_id) in enumerate(order):
        mine, theirs = found[3.0][index], own[task, doc_id]
        metric = "exact_match" if task == "tiny_known" else "acc"
        assert mine["reward"] == float(theirs[metric]), (task, doc_id)
        if task == "tiny_known":  # greedy generation, token for token
            assert mine["response"] == theirs["filtered_resps"][0], (task, doc_id)
        else:  # the choice of highest log-likelihood
            values = [r[0] for r in theirs["filtered_resps"]]
            assert mine["response"] == theirs["doc"]["choices"][values.index(max(values))], (task, doc_id)
    assert {mine["reward"] for mine in found[3.0].values() if mine["prompt_index"] >= 40} == {0.0, 1.0}


def test_a_task_run_resumes_without_answering_again(expo, moving, tasks, tmp_path):
    sft, aligned = moving
    command = ("tune", "--sft", sft, "--aligned", aligned, "--task", tasks["mc"], "--alpha", "2,5", "--holdout", "0",
               "--run-dir", tmp_path / "run", "--json")  # fmt: skip
    first = expo(*command)
    assert first.code == 0, first.stderr
    again = expo(*command)
    assert again.code == 0, again.stderr
    one, two = json.loads(first.stdout), json.loads(again.stdout)
    assert one["run"]["generated"] == 3 * 40 and two["run"]["generated"] == 0  # 3 candidates, 40 documents
    assert one["candidates"] == two["candidates"]
    table = expo(*command[:-1]).stdout  # the table names what is compared: task scores over documents
    assert "score [95% CI]" in table and "selection documents" in table and "reward" not in table.split("\n")[0]
    assert (tmp_path / "run" / "generations" / "selection").is_dir()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--task", "no_such_task_anywhere"), "--task no_such_task_anywhere: lm-eval knows no such task"),
        (("--task", "missing.yaml"), "--task missing.yaml: no such task file"),
        (("--task", "{mc}", "--prompts", "p.jsonl"), "--task answers its tasks' own documents"),
        (("--task", "{mc}", "--reward-fn", "g.py:f"), "pass one objective"),
        (("--task", "{mc},{mc}"), "a task is named twice"),
        (("--task", "{mc}", "--backend", "vllm"), "--task and --guard need --backend transformers"),
        (("--reward-fn", "g.py:f", "--prompts", "p.jsonl", "--guard", "{mc}:x"), "--guard"),
    ],
)
def test_task_settings_refused_before_work(expo, moving, tasks, tmp_path, extra, message):
    sft, aligned = moving
    extra = tuple(e.format(mc=tasks["mc"]) for e in extra)
    run = expo("tune", "--sft", sft, "--aligned", aligned, *extra, "--run-dir", tmp_path / "run")
    assert run.code == 2, run.stderr
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "run").exists()


def test_a_task_whose_metric_is_not_a_mean_is_refused(expo, moving, tmp_path):
    sft, aligned = moving
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": f"w{i} w{i + 1}"}) + "\n" for i in range(8, 20)))
    task = tmp_path / "rolling.yaml"
    task.write_text(
        f"task: tiny_rolling\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n"
    )
    run = expo("tune", "--sft", sft, "--aligned", aligned, "--task", task, "--run-dir", tmp_path / "run")
    assert run.code == 2 and "tiny_rolling: output_type loglikelihood_rolling" in run.stderr, run.stderr


def test_the_guard_reports_every_candidate_and_keeps_its_answers_apart(expo, tasks, tmp_path):
    """The steered pair says w7 more the larger α (the reward); the guard task's scores are those lm-eval gives."""
    sft, aligned = steered_pair(tmp_path / "steered")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"w{8 + i} w{30 + i}"}) + "\n" for i in range(12)))
    grader = tmp_path / "grader.py"
    grader.write_text("def w7(prompt, response):\n    words = response.split()\n"
                      "    return words.count('w7') / max(len(words), 1)\n")  # fmt: skip
    run = expo("tune", "--sft", sft, "--aligned", aligned, "--prompts", prompts, "--reward-fn", f"{grader}:w7",
               "--alpha", "2", "--max-new-tokens", "4", "--guard", f"{tasks['mc']}:0.05", "--run-dir",
               tmp_path / "run", "--json", "--report", tmp_path / "report.html")  # fmt: skip
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    guard = report["guard"]
    assert guard["tasks"] == "tiny_mc (acc)" and guard["max_loss"] == 0.05
    assert [c["alpha"] for c in guard["candidates"]] == [0.0, 2.0]
    check = guard["candidates"][1]
    # the loss interval is α = 0's score minus α = 2's, and the rule is its upper end against the limit
    assert check["loss"][0] == pytest.approx(guard["candidates"][0]["score"] - check["score"])
    assert check["admissible"] == (check["loss"][2] <= 0.05)
    assert (tmp_path / "run" / "guard").is_dir() and (tmp_path / "run" / "generations").is_dir()
    guard_files = list((tmp_path / "run" / "guard").glob("*/generations/selection/alpha=*.jsonl"))
    assert len(guard_files) == 2  # α = 0 and α = 2 answered the guard's documents, kept apart from the responses
    page = (tmp_path / "report.html").read_text()
    assert "Guard: tiny_mc (acc)" in page and ("admitted" if check["admissible"] else "excluded") in page
