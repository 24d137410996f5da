"""The pairwise judge objective against a local OpenAI-compatible server that judges by a known rule (judge_server):
both orders asked, scores as the rule says, the verdict cache (resume and --rescore pay nothing), the budget refused
before starting, retries through 429/503, malformed verdicts, redirects refused; and the length-controlled win rate
on constructed data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from expo_cli.tuning.decision.lengthcontrol import length_controlled
from expo_cli.tuning.decision.statistics import Bootstrap
from expo_cli.tuning.objectives.judge import parse_verdict
from helpers import steered_pair
from judge_server import Judge, credit, serve

KEY = "sk-test-judge-key"
PROMPTS = [f"w{8 + i} w{30 + i % 7}" for i in range(10)]


@pytest.fixture(scope="module")
def steered(tmp_path_factory) -> tuple[Path, Path]:
    return steered_pair(tmp_path_factory.mktemp("steered"))


@pytest.fixture
def judge(monkeypatch):
    monkeypatch.setenv("EXPO_JUDGE_API_KEY", KEY)
    state = Judge()
    server = serve(state)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()


def run_judged(expo, steered, tmp_path, judge, *extra):
    sft, aligned = steered
    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return expo("tune", "--sft", sft, "--aligned", aligned, "--prompts", prompts, "--judge", "stub-judge",
                "--judge-url", judge.url, "--alpha", "3", "--max-new-tokens", "5", "--holdout", "0",
                "--run-dir", tmp_path / "run", "--save-responses", tmp_path / "responses.jsonl", "--json",
                *extra)  # fmt: skip


def saved(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "responses.jsonl").read_text().splitlines()]


def test_each_answer_is_judged_against_alpha_0_in_both_orders(expo, steered, tmp_path, judge):
    run = run_judged(expo, steered, tmp_path, judge, "--report", tmp_path / "report.html")
    assert run.code == 0, run.stderr
    records = saved(tmp_path)
    candidate = [r for r in records if r["alpha"] == 3.0]
    differ = [r for r in candidate if r["response"] != r["reference"]]
    assert differ and any(credit(r["response"], r["reference"]) != 0.5 for r in differ)  # the rule has work to do
    for record in records:  # the score is the rule's credit over both orders; α = 0 ties with itself
        assert record["reward"] == credit(record["response"], record["reference"]), record
    asked = set(judge.asked)
    for r in differ:  # both orders, each once
        assert (r["response"], r["reference"]) in asked and (r["reference"], r["response"]) in asked
    assert len(judge.asked) == 2 * len({(r["prompt"], r["response"], r["reference"]) for r in differ})
    assert all(r["verdicts"] and {v["order"] for v in r["verdicts"]} == {"response first", "α=0 first"}
               for r in differ)  # fmt: skip
    report = json.loads(run.stdout)
    assert report["objective"] == "judge" and report["judge"]["calls"] == len(judge.asked)
    wins = np.mean([r["reward"] for r in candidate])
    assert report["judge"]["candidates"]["3"]["win_rate"][0] == pytest.approx(wins)
    # the key went to the endpoint, and nowhere else: not into the run folder, the responses or the report
    assert {r["authorization"] for r in judge.requests} == {f"Bearer {KEY}"}
    for path in [*(tmp_path / "run").rglob("*"), tmp_path / "responses.jsonl"]:
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path
    assert KEY not in run.stdout + run.stderr
    page = (tmp_path / "report.html").read_text()  # the judge's summary, and its raw verdicts beside each answer
    assert "Judge: stub-judge" in page and "length-controlled" in page
    data = json.loads(page.split('id="tune-data">')[1].split("</script>")[0])
    shown = [s for p in data["prompts"] for s in p["responses"].get("3", []) if s.get("verdicts")]
    assert len(shown) == len(differ) and {v["raw"] for s in shown for v in s["verdicts"]} <= {"A", "B", "tie"}


def test_resume_and_rescore_never_pay_twice(expo, steered, tmp_path, judge):
    first = run_judged(expo, steered, tmp_path, judge)
    assert first.code == 0, first.stderr
    paid = len(judge.requests)
    assert paid > 0
    again = run_judged(expo, steered, tmp_path, judge)
    assert again.code == 0 and len(judge.requests) == paid, again.stderr
    sft, aligned = steered
    table = expo("tune", "--sft", sft, "--aligned", aligned, "--prompts", tmp_path / "prompts.jsonl", "--judge",
                 "stub-judge", "--judge-url", judge.url, "--alpha", "3", "--max-new-tokens", "5", "--holdout", "0",
                 "--run-dir", tmp_path / "run")  # fmt: skip
    assert table.code == 0 and len(judge.requests) == paid  # the table names the judge's credit, and its win rates
    assert "judge credit [95% CI]" in table.stdout and "α=3: win rate vs α=0" in table.stdout
    rewards = [r["reward"] for r in saved(tmp_path)]
    shutil.rmtree(tmp_path / "run" / "rewards")  # the scores lost: only the answers and the verdicts are kept
    rescored = run_judged(expo, steered, tmp_path, judge, "--rescore", "--judge-budget", "0")
    assert rescored.code == 0, rescored.stderr
    assert any(r["response"] != r["reference"] for r in saved(tmp_path))  # there were verdicts to find again
    assert list((tmp_path / "run" / "rewards").glob("*/selection/alpha=*.jsonl"))  # scored anew, from the cache
    assert len(judge.requests) == paid and [r["reward"] for r in saved(tmp_path)] == rewards


def test_a_budget_too_small_is_refused_before_anything_is_generated(expo, steered, tmp_path, judge):
    run = run_judged(expo, steered, tmp_path, judge, "--judge-budget", "3")
    assert run.code == 2, run.stderr
    assert "--judge-budget 3: this run may need 20 judge calls" in run.stderr  # 10 prompts, both orders
    assert judge.requests == [] and not list((tmp_path / "run").glob("generations/*/*.jsonl"))


def test_rate_limits_and_server_errors_are_retried(expo, steered, tmp_path, judge):
    judge.failures = [429, 503, 429]
    run = run_judged(expo, steered, tmp_path, judge)
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)["judge"]
    assert judge.failures == []  # every fault was served
    assert report["requests"] == report["calls"] + 3 == len(judge.requests)
    assert all(r["reward"] == credit(r["response"], r["reference"]) for r in saved(tmp_path))


def test_a_malformed_verdict_counts_as_a_tie_and_is_reported(expo, steered, tmp_path, judge):
    judge.malformed = 1
    run = run_judged(expo, steered, tmp_path, judge)
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["judge"]["malformed"] == 1
    first, second = judge.asked[0]  # the first verdict asked was the malformed one: A = the candidate's answer
    record = next(r for r in saved(tmp_path) if r["response"] == first and r["reference"] == second)
    other = 1 - {"A": 1.0, "B": 0.0, "tie": 0.5}[judge.verdict(second, first)]
    assert record["reward"] == (0.5 + other) / 2
    assert {"order": "response first", "verdict": "malformed"}.items() <= record["verdicts"][0].items()


def test_position_bias_cancels(expo, steered, tmp_path, judge):
    judge.rule = "first"  # always "A", whatever is shown
    run = run_judged(expo, steered, tmp_path, judge)
    assert run.code == 0, run.stderr
    assert any(r["response"] != r["reference"] for r in saved(tmp_path)) and judge.asked  # it was asked
    assert {r["reward"] for r in saved(tmp_path)} == {0.5}
    assert json.loads(run.stdout)["alpha"] == 0


@pytest.mark.parametrize("code", [302, 307])
def test_a_redirect_is_refused_and_the_key_not_followed(expo, steered, tmp_path, judge, code):
    elsewhere = Judge()
    server = serve(elsewhere)
    try:
        judge.redirect_to = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
        judge.redirect_code = code
        run = run_judged(expo, steered, tmp_path, judge)
    finally:
        server.shutdown()
    assert run.code == 3, run.stderr
    assert f"the judge redirected (HTTP {code}); redirects are refused" in run.stderr.strip().splitlines()[-1]
    assert elsewhere.requests == []  # nothing, and no key, went to the other address


@pytest.mark.parametrize(
    ("text", "verdict"),
    [("A", "A"), (" b\n", "B"), ("Tie.", "tie"), ("[[A]]", "A"), ("Reasoning...\nB", "B"), ("A or B", "malformed"),
     ("", "malformed"), ("Answer: A", "malformed")],
)  # fmt: skip
def test_verdicts_are_read_strictly(text, verdict):
    assert parse_verdict(text) == verdict


def test_the_length_controlled_win_rate_recovers_the_win_rate_at_equal_length():
    """Preferences drawn from σ(θ + φ·tanh(Δ/sd)): σ(θ) is recovered, and a judge that only likes length wins
    often raw but half the time at equal length."""
    rng = np.random.default_rng(0)
    prompts = 4000
    difference = rng.normal(30, 40, size=prompts)  # the candidate's answers are longer
    x = np.tanh(difference / difference.std())
    bootstrap = Bootstrap(prompts, draws=200, seed=1)
    for theta, phi in ((0.0, 2.0), (0.8, 1.0), (-0.5, 0.0)):
        won = rng.random(prompts) < 1 / (1 + np.exp(-(theta + phi * x)))
        controlled = length_controlled(won.astype(float), difference, bootstrap)
        assert controlled.estimate == pytest.approx(1 / (1 + np.exp(-theta)), abs=0.035)
        assert controlled.low < controlled.estimate < controlled.high
        if phi > 1:  # length alone: a raw win rate well above a half, the controlled one at a half
            assert won.mean() > 0.65


def test_the_length_controlled_intervals_cover():
    """Over 60 seeded runs of 300 prompts (ties included as half credit), the 95% interval covers σ(θ) in most."""
    theta, phi, covered = 0.6, 1.5, 0
    for seed in range(60):
        rng = np.random.default_rng([seed, 5])
        difference = rng.normal(20, 30, size=300)
        p = 1 / (1 + np.exp(-(theta + phi * np.tanh(difference / difference.std()))))
        credit = (rng.random((300, 2)) < p[:, None]).mean(axis=1)  # two orders: 0, ½ or 1
        found = length_controlled(credit, difference, Bootstrap(300, draws=400, seed=seed))
        covered += found.low <= 1 / (1 + np.exp(-theta)) <= found.high
    assert covered >= 52  # 95% nominal: at least 87% here (a binomial(60, 0.95) falls below 52 in < 1% of suites)
