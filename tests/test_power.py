"""The power calculation tune states before generating (expo_cli.tuning.decision.power); the simulation that checks it
against the whole procedure is in tests/test_selection.py."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from expo_cli.tuning.decision import power


def test_one_candidate_needs_the_plain_two_sided_critical_value_and_more_need_more():
    assert power.critical(1) == pytest.approx(NormalDist().inv_cdf(0.975))
    values = [power.critical(k) for k in (1, 2, 3, 7, 20)]
    assert values == sorted(values) and values[-1] < 3.5
    # Šidák: K independent intervals at this level cover all K gains 95% of the time
    per = 2 * (1 - NormalDist().cdf(power.critical(3)))
    assert (1 - per) ** 3 == pytest.approx(0.95)


def test_the_detectable_gain_is_where_the_power_is_80_percent_and_the_prompt_count_is_the_fewest():
    found = power.detectable(70, 30, 3)
    assert power.power(found, 70, 30, 3) == pytest.approx(0.8, abs=1e-6)
    assert 0.5 < found < 0.55  # the README: 100 prompts find about 0.52 SD with 3 candidates
    needed = power.prompts_for(0.3, 3, 0.3)
    split = lambda n: (n - round(0.3 * n), round(0.3 * n))  # noqa: E731
    assert power.power(0.3, *split(needed), 3) >= 0.8 > power.power(0.3, *split(needed - 1), 3)
    assert 280 <= needed <= 320  # the README: about 300
    assert power.power(0.3, 100, 0, 3) == 0 and math.isinf(power.detectable(100, 0, 3))


def test_the_advice_says_what_the_prompts_can_find_and_how_many_a_target_needs():
    advice = power.Power(70, 30, 3, 0.3).advice()
    assert advice.startswith("power: 70 selection and 30 held-out prompts, 3 candidate(s): a gain of 0.52 SD")
    assert f"0.3 SD (--target-gain) needs about {power.prompts_for(0.3, 3, 0.3)} prompts" in advice
    unconfirmable = power.Power(99, 0, 3, 0.0).advice()
    needed = power.prompts_for(0.3, 3, 0.3)
    assert "no choice can be confirmed" in unconfirmable
    assert f"with --holdout 0.3, {needed} prompts find and confirm a gain of 0.3 SD" in unconfirmable
    held, fewer = round(0.3 * needed), needed - 1  # the count it names is the fewest that reach 80% so split
    assert power.power(0.3, needed - held, held, 3) >= 0.8
    assert power.power(0.3, fewer - round(0.3 * fewer), round(0.3 * fewer), 3) < 0.8
    measured = power.Power(70, 30, 3, 0.3).to_json(spread=0.5)
    assert measured["detectable_reward"] == pytest.approx(0.5 * power.detectable(70, 30, 3))
    assert power.Power(99, 0, 3, 0.0).to_json(None)["detectable_sd"] is None


def test_the_advice_follows_the_users_target():
    advice = power.Power(70, 30, 3, 0.3, target=0.5).advice()
    assert advice.endswith(f"0.5 SD (--target-gain) needs about {power.prompts_for(0.5, 3, 0.3)} prompts")
    assert power.prompts_for(0.5, 3, 0.3) < 120 < power.prompts_for(0.3, 3, 0.3)
