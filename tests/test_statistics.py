"""The statistics behind a chosen α, on constructed data whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from expo_cli.tuning.selection import recommend
from expo_cli.tuning.statistics import Bootstrap, Scores, compare, win_credit


def test_a_constant_paired_gain_has_a_zero_width_interval():
    base = np.random.default_rng(0).normal(size=300)
    stats = compare(
        {0.0: base, 0.5: base + 0.25, 1.0: base - 0.1},
        {0.0: np.ones(300), 0.5: np.ones(300), 1.0: np.ones(300)},
        draws=500,
    )
    gain = {s.alpha: s.gain for s in stats}
    assert gain[0.5].estimate == pytest.approx(0.25) and gain[0.5].low == pytest.approx(0.25)
    assert gain[0.5].high == pytest.approx(0.25)
    assert gain[1.0].high == pytest.approx(-0.1) and not stats[2].significant and stats[1].significant
    assert {s.alpha: s.win_rate.estimate for s in stats} == {0.0: 0.5, 0.5: 1.0, 1.0: 0.0}


def test_the_interval_of_a_mean_has_the_width_theory_gives():
    rng = np.random.default_rng(1)
    n, sigma = 2000, 3.0
    values = rng.normal(10.0, sigma, size=n)
    interval = Bootstrap(n, draws=4000, seed=2).mean(values)
    half_width = (interval.high - interval.low) / 2
    assert half_width == pytest.approx(1.96 * sigma / np.sqrt(n), rel=0.08)
    assert interval.low < values.mean() < interval.high


def test_the_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    covered = 0
    for trial in range(200):
        values = rng.exponential(2.0, size=200)  # skewed: the true mean is 2
        interval = Bootstrap(200, draws=1000, seed=trial).mean(values)
        covered += interval.low <= 2.0 <= interval.high
    assert 0.90 <= covered / 200 <= 0.99


def test_win_credit_counts_ties_as_half():
    assert win_credit(np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 4.0])).tolist() == [1.0, 0.5, 0.0]


def test_prompt_rewards_average_the_samples_of_each_prompt():
    scores = Scores.of([[1, 3], [10, 20], [5, 7]])
    assert scores.prompt_rewards.tolist() == [2.0, 15.0, 6.0]


def test_the_gain_at_equal_length_is_the_intercept_of_the_length_regression():
    rng = np.random.default_rng(4)
    n = 400
    length_gain = rng.normal(0, 5, size=n)
    x = np.tanh(length_gain / length_gain.std())
    boot = Bootstrap(n, draws=2000, seed=0)
    exact = boot.length_adjusted(0.3 + 0.5 * x, length_gain)
    assert (exact.estimate, exact.low, exact.high) == pytest.approx((0.3, 0.3, 0.3))
    only_length = boot.length_adjusted(0.5 * x + rng.normal(0, 0.05, size=n), length_gain)
    assert only_length.low < 0 < only_length.high
    no_length_change = boot.length_adjusted(np.full(n, 0.2), np.zeros(n))
    assert no_length_change.estimate == pytest.approx(0.2)


def test_a_gain_bought_by_length_is_flagged():
    rng = np.random.default_rng(5)
    n = 500
    base_len = rng.integers(50, 100, size=n).astype(float)
    longer = base_len + rng.normal(40, 20, size=n)  # +~50% longer
    base = rng.normal(0, 1, size=n)
    gains = 0.8 * np.tanh((longer - base_len - 40) / 20) + 0.8  # all of the gain goes with length
    stats = compare({0.0: base, 1.0: base + gains}, {0.0: base_len, 1.0: longer}, draws=2000)
    choice = recommend(stats)
    assert choice.alpha == 1.0
    assert any("longer responses may explain" in w for w in choice.warnings)
    assert any("% longer than α=0" in w for w in choice.warnings)


def test_the_recommendation_is_the_best_significant_candidate_or_the_aligned_model():
    rng = np.random.default_rng(6)
    n = 300
    base = rng.normal(0, 1, size=n)
    lengths = {a: np.full(n, 10.0) for a in (0.0, 0.3, 0.5, 3.0)}
    rewards = {
        0.0: base,
        0.3: base + 0.2 + rng.normal(0, 0.1, size=n),  # significant
        0.5: base + 0.3 + rng.normal(0, 0.1, size=n),  # significant and best
        3.0: base + rng.normal(0.35, 8.0, size=n),  # highest mean, but noise: not significant
    }
    stats = compare(rewards, lengths, draws=2000)
    choice = recommend(stats)
    assert choice.alpha == 0.5 and choice.reason.startswith("2 of 3 candidate(s) beat α=0 significantly")
    assert not [s for s in stats if s.alpha == 3.0][0].significant
    worse = {0.0: base, 0.3: base - 0.01 + rng.normal(0, 0.2, size=n)}
    none = recommend(compare(worse, {0.0: np.ones(n), 0.3: np.ones(n)}, draws=1000))
    assert none.alpha == 0.0 and none.reason.startswith("no candidate beats the aligned model")


def test_an_interval_is_the_2_5_and_97_5_percentiles_of_the_shared_resamples():
    values = np.random.default_rng(7).normal(size=60)
    boot = Bootstrap(60, draws=3000, seed=11)
    interval = boot.mean(values)
    low, high = np.percentile(values[boot.indices].mean(axis=1), [2.5, 97.5])
    assert (interval.estimate, interval.low, interval.high) == (values.mean(), low, high)


@pytest.mark.parametrize(("longer", "change", "warned"), [(15.0, 0.5, True), (11.0, 0.1, False), (10.0, 0.0, False)])
def test_the_length_change_is_a_ratio_minus_one_and_the_longer_warning_follows_it(longer, change, warned):
    rewards = np.random.default_rng(3).normal(size=50)
    per_alpha = {0.0: rewards, 0.5: rewards + 1.0, 1.0: rewards - 1.0}  # α = 0.5 clearly best, significantly
    lengths = {0.0: np.full(50, 10.0), 0.5: np.full(50, longer), 1.0: np.full(50, 10.0)}
    stats = {s.alpha: s for s in compare(per_alpha, lengths, draws=2000)}
    assert stats[0.0].length_change == 0.0 and stats[1.0].length_change == 0.0
    assert stats[0.5].length_change == pytest.approx(change, abs=1e-12)
    constant = stats[0.5].length_interval  # every prompt's length is the same: a zero-width interval at it
    assert (constant.estimate, constant.low, constant.high) == pytest.approx((longer, longer, longer))
    recommendation = recommend(list(stats.values()))
    assert recommendation.alpha == 0.5
    warning = f"α=0.5 makes responses {100 * change:.0f}% longer than α=0"
    assert (warning in recommendation.warnings) == warned, recommendation.warnings


def test_simultaneous_intervals_and_the_probability_of_being_best_match_a_brute_force_computation():
    rng = np.random.default_rng(8)
    n, draws = 40, 400
    rewards = {0.0: rng.normal(size=n), 0.5: rng.normal(0.3, 1, size=n), 1.0: rng.normal(0.1, 2, size=n)}
    stats = {s.alpha: s for s in compare(rewards, draws=draws, seed=5)}
    boot = Bootstrap(n, draws=draws, seed=5)
    # By hand, one resample at a time: the max-T critical value and who is best in each resample.
    gains = {a: rewards[a] - rewards[0.0] for a in (0.5, 1.0)}
    replicates = {a: [g[row].mean() for row in boot.indices] for a, g in gains.items()}
    errors = {a: float(np.std(r, ddof=1)) for a, r in replicates.items()}
    maxima = [max(abs(replicates[a][b] - gains[a].mean()) / errors[a] for a in gains) for b in range(draws)]
    critical = float(np.quantile(maxima, 0.95))
    for alpha, gain in gains.items():
        interval = stats[alpha].gain_simultaneous
        assert interval.low == pytest.approx(gain.mean() - critical * errors[alpha], rel=1e-9)
        assert interval.high == pytest.approx(gain.mean() + critical * errors[alpha], rel=1e-9)
        # wider than the marginal interval: it covers both gains at once
        assert interval.high - interval.low > stats[alpha].gain.high - stats[alpha].gain.low
    wins = dict.fromkeys(rewards, 0.0)
    for row in boot.indices:
        means = {a: r[row].mean() for a, r in rewards.items()}
        wins[max(means, key=means.get)] += 1 / draws
    assert {a: s.p_best for a, s in stats.items()} == pytest.approx(wins, abs=1e-12)
    assert sum(s.p_best for s in stats.values()) == pytest.approx(1.0)


def test_tied_candidates_share_the_probability_of_being_best():
    same = np.random.default_rng(9).normal(size=30)
    stats = compare({0.0: same - 1, 0.5: same, 1.0: same.copy()}, draws=200)
    assert [s.p_best for s in stats] == [0.0, 0.5, 0.5]


def test_pure_noise_candidates_look_significant_marginally_far_more_often_than_simultaneously():
    """Eight candidates equal to α = 0 but for noise: the marginal interval "finds" a winner often; the
    simultaneous one about 5% of the time at most (its family-wise level)."""
    marginal = simultaneous = 0
    trials = 200
    for trial in range(trials):
        rng = np.random.default_rng(100 + trial)
        rewards = {a: rng.normal(size=100) for a in (0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 4.0)}
        stats = compare(rewards, draws=1000, seed=trial)
        marginal += any(s.gain.low > 0 for s in stats if s.alpha)
        simultaneous += any(s.significant for s in stats)
    assert marginal / trials > 0.12 and simultaneous / trials <= 0.05, (marginal, simultaneous)


def test_win_rates_per_prompt_and_per_response_are_both_reported():
    # One prompt, two samples: the candidate's mean beats the baseline's (1 > 0.75), its samples win one of two.
    candidate, baseline = np.array([[2.0, 0.0]] * 10), np.array([[1.0, 0.5]] * 10)
    stats = compare({0.0: baseline, 1.0: candidate}, draws=100)
    assert stats[1].win_rate.estimate == 1.0 and stats[1].win_rate_responses.estimate == 0.5


def test_prompts_with_a_cut_response_are_left_out_of_the_length_fit():
    rng = np.random.default_rng(10)
    n = 300
    base_len = np.full(n, 50.0)
    length_gain = rng.normal(0, 5, size=n)
    x = np.tanh(length_gain / length_gain.std())
    gains = 0.3 + 0.5 * x
    cut = np.zeros(n, dtype=bool)
    cut[:60] = True
    gains[cut] = 5.0  # whatever a cut response scored, it must not move the fit
    stats = compare(
        {0.0: np.zeros(n), 1.0: gains},
        {0.0: base_len, 1.0: base_len + length_gain},
        {0.0: np.zeros(n, dtype=bool), 1.0: cut},
        draws=500,
    )
    kept = ~cut
    spread = length_gain[kept].std()
    assert stats[1].length_fit_prompts == n - 60 and stats[1].truncated == pytest.approx(0.2)
    expected = np.polyfit(np.tanh(length_gain[kept] / spread), gains[kept], 1)[1]
    assert stats[1].gain_at_equal_length.estimate == pytest.approx(expected)
    assert stats[1].gain.estimate == pytest.approx(gains.mean())


def test_the_smallest_alpha_not_significantly_behind_the_best_is_chosen():
    rng = np.random.default_rng(11)
    n = 400
    base = rng.normal(size=n)
    rewards = {
        0.0: base,
        0.3: base + 0.30 + rng.normal(0, 0.3, size=n),
        0.5: base + 0.32 + rng.normal(0, 0.3, size=n),  # the best mean, by noise alone
        1.0: base + 0.31 + rng.normal(0, 0.3, size=n),
        2.0: base + 0.05 + rng.normal(0, 0.3, size=n),  # significantly behind
    }
    stats = compare(rewards, draws=2000)
    choice = recommend(stats)
    assert max(stats, key=lambda s: s.reward.estimate).alpha == 0.5
    assert (
        choice.alpha == 0.3
        and "α=0.3 is the smallest not significantly behind the best of them, α=0.5" in choice.reason
    )
    assert [s for s in stats if s.alpha == 2.0][0].behind_best.low > 0
