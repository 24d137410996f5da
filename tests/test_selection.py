"""The tuning procedure on constructed rewards whose answer is known: search and choose on the selection prompts,
confirm on the held-out ones (expo_cli.tuning.procedure), without any model."""

from __future__ import annotations

import numpy as np
import pytest

from expo_cli.tuning.evaluation import Candidate
from expo_cli.tuning.generation import Response
from expo_cli.tuning.holdout import split
from expo_cli.tuning.procedure import choose
from expo_cli.tuning.selection import recommend
from expo_cli.tuning.statistics import compare

GRID = [0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 4.0]  # eight candidates, as --budget 8 gives


def constructed(curve, seed: int, noise: float = 1.0, holdout: float = 0.3):
    """evaluate(α, part): each prompt's reward is curve(α) plus noise seeded per (run, α, prompt): a reward that
    is pure noise when the curve is flat."""

    def evaluate(alpha: float, part: str) -> Candidate:
        prompts = parts.selection if part == "selection" else parts.confirmation
        responses = [Response(p, 0, f"answer {p}", 10) for p in prompts]
        rewards = [
            curve(alpha) + noise * np.random.default_rng([seed, round(alpha * 1000), p]).normal() for p in prompts
        ]
        return Candidate(alpha, part, responses, rewards, 0.0, 0.0, 0.0, len(prompts), 0)

    parts = split(200, holdout, seed, warn=lambda message: None)
    return evaluate, parts


def old_rule_finds_a_winner(evaluate, parts) -> bool:
    """The rule before held-out confirmation: every candidate on every prompt, a marginal interval excluding 0."""
    everything = {a: [*evaluate(a, "selection").rewards, *evaluate(a, "confirmation").rewards] for a in GRID}
    return any(s.gain.low > 0 for s in compare(everything, draws=1000) if s.alpha)


def test_a_pure_noise_reward_is_not_confirmed_while_the_old_rule_finds_winners():
    """The issue's experiment: a flat α curve, a reward of pure noise, eight candidates, 200 prompts (140 to choose,
    60 held out), 100 seeds."""
    seeds = range(100)
    confirmed = chosen = found = 0
    for seed in seeds:
        evaluate, parts = constructed(lambda alpha: 0.0, seed)
        outcome = choose(evaluate, GRID, len(GRID), parts, seed, draws=1000)
        chosen += outcome.recommendation.alpha != 0
        confirmed += outcome.confirmation.confirmed
        found += old_rule_finds_a_winner(evaluate, parts)
    assert confirmed / len(seeds) <= 0.05 and chosen / len(seeds) <= 0.10, (confirmed, chosen)
    assert found >= 5 and found > 2 * confirmed, found
    print(f"noise: old rule found a winner in {found}/100, new rule chose one in {chosen}, confirmed {confirmed}")


@pytest.mark.parametrize("peak", [0.3, 2.0])
def test_a_real_peak_is_chosen_and_confirmed(peak):
    curve = lambda alpha: 0.6 * np.exp(-(((alpha - peak) / max(peak, 0.3)) ** 2))  # noqa: E731
    evaluate, parts = constructed(curve, seed=1, noise=0.5)
    outcome = choose(evaluate, GRID, len(GRID) + 4, parts, seed=1, draws=2000)
    assert outcome.confirmation.confirmed, outcome.confirmation.note
    assert abs(outcome.recommendation.alpha - peak) <= 0.5 * peak
    assert sorted(outcome.held_out) == [0.0, outcome.recommendation.alpha]
    assert outcome.confirmation.prompts == 60 and outcome.confirmation.note.startswith("confirmed on 60 held-out")


def test_nothing_is_generated_on_the_held_out_prompts_when_alpha_0_is_chosen():
    asked = []
    evaluate, parts = constructed(lambda alpha: -alpha, seed=2)

    def counting(alpha: float, part: str) -> Candidate:
        asked.append((alpha, part))
        return evaluate(alpha, part)

    outcome = choose(counting, [0.0, 0.5, 1.0], 3, parts, seed=2, draws=500)
    assert outcome.recommendation.alpha == 0 and not outcome.confirmation.confirmed
    assert all(part == "selection" for _, part in asked) and outcome.confirmation.note.startswith("nothing to confirm")


def test_without_held_out_prompts_nothing_is_confirmed_and_it_says_so():
    evaluate, parts = constructed(lambda alpha: alpha, seed=3, holdout=0.0)
    outcome = choose(evaluate, [0.0, 1.0], 2, parts, seed=3, draws=500)
    assert outcome.recommendation.alpha == 1.0 and not outcome.confirmation.confirmed
    assert "no prompts were held out" in outcome.confirmation.note


def test_the_split_is_seeded_by_prompt_and_warns_when_a_side_is_small():
    quiet, warned = [], []
    a, b = split(200, 0.3, 7, quiet.append), split(200, 0.3, 7, quiet.append)
    assert a == b and len(a.confirmation) == 60 and sorted(a.selection + a.confirmation) == list(range(200))
    assert split(200, 0.3, 8, quiet.append).confirmation != a.confirmation and quiet == []
    assert split(99, None, 7, quiet.append).confirmation == [] and quiet == []  # nothing held out: nothing to warn
    assert len(split(100, None, 7, warned.append).confirmation) == 30
    assert warned == ["few prompts (selection 70, held-out 30): fewer than 50 on a side give wide intervals"]
    assert recommend([]).alpha == 0.0
