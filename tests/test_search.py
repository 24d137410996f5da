"""The search of expo tune over α, on reward curves whose best point is known."""

from __future__ import annotations

import numpy as np
import pytest

from expo_cli.tuning.decision.search import Search
from expo_cli.tuning.decision.statistics import Bootstrap


@pytest.mark.parametrize("peak", [0.37, 2.7, 7.9])
def test_the_search_finds_the_peak_of_a_concave_curve(peak):
    search = Search([0.0, 0.1, 0.3, 1.0, 3.0, 10.0], budget=14)
    evaluated = []
    while (alpha := search.next()) is not None:
        evaluated.append(alpha)
        search.record(alpha, -((alpha - peak) ** 2))
    best = max(search.scores, key=search.scores.get)
    assert len(evaluated) <= 14 and evaluated[:6] == [0.0, 0.1, 0.3, 1.0, 3.0, 10.0]
    assert abs(best - peak) < 0.05 * max(peak, 1)


def test_the_search_looks_further_out_while_the_reward_still_rises():
    search = Search([0.0, 0.5, 1.0], budget=6)
    evaluated = []
    while (alpha := search.next()) is not None:
        evaluated.append(alpha)
        search.record(alpha, alpha)
    assert evaluated == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]


def test_the_grid_alone_is_the_whole_search_without_a_budget():
    search = Search([0.0, 1.0, 2.0])
    for alpha in (0.0, 1.0, 2.0):
        assert search.next() == alpha
        search.record(alpha, 1.0)
    assert search.next() is None


def test_the_search_stops_at_the_noise_floor():
    asked = []

    def indistinguishable(a: float, b: float) -> bool:
        asked.append((a, b))
        return True  # the prompts cannot tell the best point from its neighbour

    search = Search([0.0, 1.0, 2.0, 4.0], budget=10, indistinguishable=indistinguishable)
    for alpha, score in ((0.0, 0.0), (1.0, 0.5), (2.0, 0.6), (4.0, 0.1)):
        assert search.next() == alpha
        search.record(alpha, score)
    assert search.next() is None
    assert asked == [(2.0, 1.0)]  # the best and its better neighbour


def test_a_bracket_narrower_than_the_tolerance_stops_the_search_with_budget_left():
    search = Search([1.0, 1.01, 1.02], budget=10, tolerance=0.02)  # the peak's bracket: 0.02 < 0.02 × 1.01
    for alpha, score in ((1.0, 0.1), (1.01, 0.3), (1.02, 0.2)):
        assert search.next() == alpha
        search.record(alpha, score)
    assert search.next() is None and len(search.scores) == 3
    wider = Search([1.0, 1.5, 2.0], budget=10, tolerance=0.02)  # the same shape, a bracket wide enough to refine
    for alpha, score in ((1.0, 0.1), (1.5, 0.3), (2.0, 0.2)):
        assert wider.next() == alpha
        wider.record(alpha, score)
    assert wider.next() is not None


def test_a_constant_reward_stops_the_search_right_after_the_grid():
    """Every candidate scores alike on every prompt: the bootstrap cannot tell any two apart, so no refinement."""
    rewards = np.full(40, 0.5)

    def indistinguishable(a: float, b: float) -> bool:
        return not Bootstrap(len(rewards), draws=500, seed=0).mean(rewards - rewards).excludes_zero()

    search = Search([0.0, 0.1, 0.3, 0.5], budget=9, indistinguishable=indistinguishable)
    evaluated = []
    while (alpha := search.next()) is not None:
        evaluated.append(alpha)
        search.record(alpha, float(rewards.mean()))
    assert evaluated == [0.0, 0.1, 0.3, 0.5]


def test_when_alpha_0_is_best_the_interval_up_to_the_smallest_alpha_is_probed():
    """The best point is the grid's smallest: its only neighbour is the next α, never itself."""
    asked = []

    def indistinguishable(a: float, b: float) -> bool:
        asked.append((a, b))
        return False

    search = Search([0.0, 0.1, 0.3], budget=5, indistinguishable=indistinguishable)
    for alpha, score in ((0.0, 1.0), (0.1, 0.8), (0.3, 0.2)):
        assert search.next() == alpha
        search.record(alpha, score)
    assert search.next() == pytest.approx(0.0382)  # the golden point of [0, 0.1]
    assert asked == [(0.0, 0.1)]


def test_doubling_stops_when_the_rise_is_not_significant():
    search = Search([0.0, 1.0], budget=8, indistinguishable=lambda a, b: (a, b) == (2.0, 1.0))
    evaluated = []
    while (alpha := search.next()) is not None:
        evaluated.append(alpha)
        search.record(alpha, alpha)  # still rising, but 2 cannot be told from 1
    assert evaluated == [0.0, 1.0, 2.0] and search.stopped == "noise floor"


def test_doubling_stops_when_the_text_degenerates():
    search = Search([0.0, 1.0], budget=8, degenerate=lambda alpha: alpha >= 4.0)
    evaluated = []
    while (alpha := search.next()) is not None:
        evaluated.append(alpha)
        search.record(alpha, alpha)
    assert evaluated == [0.0, 1.0, 2.0, 4.0] and search.stopped == "degeneration"


@pytest.mark.parametrize(
    ("grid", "budget", "scores", "reason"),
    [
        ([0.0, 1.0, 2.0], None, (0.0, 1.0, 0.5), "grid"),
        ([0.0, 1.0, 2.0], 4, (0.0, 1.0, 0.5), "budget"),
        ([1.0, 1.01, 1.02], 10, (0.1, 0.3, 0.2), "bracket"),
    ],
)
def test_the_search_says_why_it_stopped(grid, budget, scores, reason):
    search = Search(grid, budget=budget)
    while (alpha := search.next()) is not None:
        search.record(alpha, dict(zip(grid, scores, strict=True)).get(alpha, 0.7))
    assert search.stopped == reason


@pytest.mark.parametrize("sign", ["cut", "repetitive"])
def test_the_search_stops_at_either_sign_of_degeneration(sign):
    """Reward keeps rising with α, but at α = 4 the answers are all cut, or all repeat themselves: either alone
    stops the search there (a reward that rises on broken text is not a reason to go further)."""
    from expo_cli.tuning.backends.generation import Response
    from expo_cli.tuning.decision.candidate import Candidate
    from expo_cli.tuning.decision.procedure import _search

    prompts = list(range(40))

    def evaluate(alpha: float, part: str) -> Candidate:
        broken = alpha >= 4
        responses = [
            Response(
                p,
                0,
                "so so so so so so so so so so" if broken and sign == "repetitive" else f"answer {p} at {alpha}",
                8,
                "length" if broken and sign == "cut" else "stop",
            )
            for p in prompts
        ]
        rewards = [0.1 * alpha + 0.01 * (p % 5) for p in prompts]
        return Candidate(alpha, part, responses, rewards, 0.0, 0.0, 0.0, 0, unfit=[False] * len(prompts))

    evaluated, stopped = _search(evaluate, [0.0, 1.0, 2.0], budget=10, prompts=prompts, seed=0)
    assert stopped == "degeneration" and sorted(evaluated) == [0.0, 1.0, 2.0, 4.0]
