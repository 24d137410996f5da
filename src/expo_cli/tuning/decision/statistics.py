"""The statistics behind a chosen α: paired bootstrap over prompts, simultaneous intervals, win rates, and how much
of a gain is length.

The unit of resampling is the prompt (samples of one prompt are averaged first): a 95% percentile bootstrap
(Koehn 2004) over prompt indices, the same resamples for every candidate, so that a candidate's difference from
α = 0 is judged on paired data.

Several candidates are compared at once, so a marginal interval that excludes 0 is not evidence (with 8 candidates
of pure noise one of them often looks "significant"). `significant` therefore uses simultaneous intervals: the
max-T bootstrap (Romano & Wolf 2005), ĝₖ ± c·seₖ where c is the 95th percentile over resamples of
maxₖ |g*ₖ − ĝₖ| / seₖ, which cover all K gains at once in 95% of samples. No "probability of being the best" is
given: the share of resamples an observed winner wins is not one (under a null with 8 equal candidates it was ~0.4,
not 1/8).

The held-out confirmation is one comparison fixed before its data is seen, so it is the textbook paired test: a
Student t interval for the mean per-prompt gain (`t_interval`). The percentile bootstrap is too narrow on few
prompts (on 30 held-out prompts its 95% interval excluded a true 0 on one side 3.2% of the time, not 2.5%, and
further in the tails, as the later looks' stricter levels need, relatively more); the t interval is exact for
normal gains and close for means of several samples.

Length: ExPO tends to lengthen answers (the paper's raw win rates always gain more than its length-controlled
ones). The per-prompt gain dᵢ is regressed on tanh(Δlenᵢ / sd(Δlen)) (the shape of AlpacaEval's length-controlled
GLM), and the intercept, the gain at equal length, is reported with its bootstrap interval beside the raw gain.
Prompts where either side has a cut response (at --max-new-tokens, or too long for the reward model) are left out
of that fit: a cut response's length is the limit, not the model's choice. The same prompts are left out of
`gain_without_cut`, the sensitivity check of the gain: a cut answer is scored as if it were complete.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

DRAWS = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        if np.isnan(self.estimate):
            return "n/a"
        estimate, low, high = (_printable(v) for v in (self.estimate, self.low, self.high))
        return f"{estimate:+.4g} [{low:+.4g}, {high:+.4g}]"


NOISE = 1e-12  # differences of float64 means below this are rounding, not rewards (two equal answers: ±1e-17)


def _printable(value: float) -> float:
    """0 for rounding noise, so two identical candidates read +0 [+0, +0], not -6.939e-18 [-1.388e-17, ...]."""
    return 0.0 if abs(value) < NOISE else value


NO_INTERVAL = Interval(float("nan"), float("nan"), float("nan"))


class Bootstrap:
    """Resamples of prompt indices, drawn once and shared by every statistic and candidate."""

    def __init__(self, prompts: int, draws: int = DRAWS, seed: int = 0, level: float = LEVEL) -> None:
        self.indices = np.random.default_rng(seed).integers(0, prompts, size=(draws, prompts), dtype=np.int64)
        self.level = level  # of every interval: two-sided, the central `level` of the resamples

    def replicates(self, values: np.ndarray) -> np.ndarray:
        """The mean of `values` (one per prompt) in every resample."""
        return np.asarray(values, dtype=np.float64)[self.indices].mean(axis=1)

    def interval(self, estimate: float, replicates: np.ndarray) -> Interval:
        if len(replicates) == 0:
            return NO_INTERVAL
        tail = round(100 * (1 - self.level) / 2, 9)  # written exactly: 2.5 for 95%
        low, high = np.percentile(replicates, (tail, 100 - tail))
        return Interval(float(estimate), float(low), float(high))

    def mean(self, values: np.ndarray) -> Interval:
        values = np.asarray(values, dtype=np.float64)
        return self.interval(values.mean(), self.replicates(values))

    def length_adjusted(self, gains: np.ndarray, length_gains: np.ndarray, kept: np.ndarray | None = None) -> Interval:
        """The intercept b₀ of dᵢ = b₀ + b₁·tanh(Δlenᵢ/sd(Δlen)) over the `kept` prompts: the gain not explained by
        length."""
        gains = np.asarray(gains, dtype=np.float64)
        weights = np.ones_like(gains) if kept is None else np.asarray(kept, dtype=np.float64)
        if weights.sum() == 0:
            return NO_INTERVAL
        length_gains = np.asarray(length_gains, dtype=np.float64)
        spread = float(np.std(length_gains[weights > 0]))
        x = np.tanh(length_gains / spread) if spread > 0 else np.zeros_like(gains)
        estimate = _intercept(x[None, :], gains[None, :], weights[None, :])[0]
        resampled = _intercept(x[self.indices], gains[self.indices], weights[self.indices])
        return self.interval(estimate, resampled[~np.isnan(resampled)])


def t_quantile(p: float, freedom: int) -> float:
    """Student's t quantile (Cornish-Fisher expansion in 1/ν: within 1e-3 of the exact value from ν = 10 on for
    p ≤ 0.999; a little small below that, where intervals on so few prompts say little anyway)."""
    z = NormalDist().inv_cdf(p)
    nu = float(freedom)
    return (
        z
        + (z**3 + z) / (4 * nu)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * nu**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * nu**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * nu**4)
    )


def t_interval(values: np.ndarray, level: float = LEVEL) -> Interval:
    """The Student t interval of the mean of `values` (one per prompt) at `level`."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n < 2:
        return NO_INTERVAL
    half = t_quantile(1 - (1 - level) / 2, n - 1) * float(values.std(ddof=1)) / math.sqrt(n)
    mean = float(values.mean())
    return Interval(mean, mean - half, mean + half)


def _intercept(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise weighted OLS intercept of y on x (the mean of y where x does not vary; NaN for a row of no weight)."""
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (w * x).sum(axis=1) / total
        my = (w * y).sum(axis=1) / total
    var = (w * (x - mx[:, None]) ** 2).sum(axis=1)
    cov = (w * (x - mx[:, None]) * (y - my[:, None])).sum(axis=1)
    slope = np.divide(cov, var, out=np.zeros_like(cov), where=var > 1e-12)
    return my - slope * mx


def simultaneous(bootstrap: Bootstrap, values: Mapping[float, np.ndarray]) -> dict[float, Interval]:
    """Max-T intervals for the means of several per-prompt series that hold for all of them at once (at the
    bootstrap's level)."""
    if not values:
        return {}
    keys = list(values)
    estimates = np.array([np.mean(values[k]) for k in keys])
    replicates = np.stack([bootstrap.replicates(values[k]) for k in keys], axis=1)  # (draws, K)
    errors = replicates.std(axis=0, ddof=1)
    deviations = np.abs(replicates - estimates)
    scaled = np.divide(deviations, errors, out=np.zeros_like(deviations), where=errors > 0)
    critical = float(np.quantile(scaled.max(axis=1), bootstrap.level))
    return {
        k: Interval(float(e), float(e - critical * s), float(e + critical * s))
        for k, e, s in zip(keys, estimates, errors, strict=True)
    }


def win_credit(candidate: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """1 for a win over the baseline, ½ for a tie, 0 for a loss (AlpacaEval's draw credit)."""
    return np.where(candidate > baseline, 1.0, np.where(candidate == baseline, 0.5, 0.0))


@dataclass(frozen=True)
class Scores:
    """One candidate's responses as arrays of shape (prompts, samples): sample s of every candidate was drawn with
    the same seed, so samples pair across candidates as prompts do."""

    rewards: np.ndarray
    lengths: np.ndarray
    truncated: np.ndarray  # bool: the response was cut (at --max-new-tokens, or to fit the reward model)

    @classmethod
    def of(cls, rewards: Any, lengths: Any = None, truncated: Any = None) -> Scores:
        """From arrays of one value per prompt (one sample) or per (prompt, sample)."""
        rewards = np.asarray(rewards, dtype=np.float64)
        rewards = rewards[:, None] if rewards.ndim == 1 else rewards
        lengths = np.zeros_like(rewards) if lengths is None else np.asarray(lengths, dtype=np.float64)
        truncated = np.zeros(rewards.shape, dtype=bool) if truncated is None else np.asarray(truncated, dtype=bool)
        return cls(rewards, lengths.reshape(rewards.shape), truncated.reshape(rewards.shape))

    @property
    def prompt_rewards(self) -> np.ndarray:
        return self.rewards.mean(axis=1)

    @property
    def prompt_lengths(self) -> np.ndarray:
        return self.lengths.mean(axis=1)


@dataclass(frozen=True)
class CandidateStats:
    alpha: float
    reward: Interval  # mean reward over prompts
    gain: Interval  # paired difference against α = 0 (a marginal interval: bootstrap, or t on held-out prompts)
    gain_simultaneous: Interval  # the same gain, its interval simultaneous over every candidate compared
    behind_best: Interval  # the best significant candidate's (else the best's) mean reward minus this one's
    # (simultaneous over the candidates)
    win_rate: Interval  # against α = 0, per prompt (mean reward over its samples)
    win_rate_responses: Interval  # against α = 0, per response (sample s against sample s), averaged per prompt
    length: float  # mean response length in tokens
    length_interval: Interval  # its 95% interval over prompts
    length_change: float  # relative to α = 0
    gain_at_equal_length: Interval  # prompts with a cut response on either side left out of the fit
    gain_without_cut: Interval  # the gain on the prompts where neither side has a cut response
    truncated: float  # the share of responses cut (at --max-new-tokens, or to fit the reward model)
    length_fit_prompts: int  # prompts in the length fit and in gain_without_cut

    @property
    def significant(self) -> bool:
        """The gain over α = 0 is positive even allowing for every other candidate compared."""
        return self.gain_simultaneous.low > 0

    def to_json(self) -> dict[str, Any]:
        return {**{k: _finite(v) for k, v in asdict(self).items()}, "significant": self.significant}


def _finite(value: Any) -> Any:
    """JSON has no NaN: an interval that could not be computed is null."""
    if isinstance(value, dict):
        return None if any(isinstance(v, float) and np.isnan(v) for v in value.values()) else value
    return value


def compare(
    rewards: Mapping[float, Any],
    lengths: Mapping[float, Any] | None = None,
    truncated: Mapping[float, Any] | None = None,
    **settings: Any,
) -> list[CandidateStats]:
    """Statistics of every candidate against the baseline, sorted by α. Values are per prompt, or per (prompt,
    sample) as arrays of shape (prompts, samples); `settings`: those of `compare_scores` (baseline, draws, seed,
    level, paired_t)."""
    scores = {a: Scores.of(r, (lengths or {}).get(a), (truncated or {}).get(a)) for a, r in rewards.items()}
    return compare_scores(scores, **settings)


def compare_scores(
    scores: Mapping[float, Scores],
    baseline: float = 0.0,
    draws: int = DRAWS,
    seed: int = 0,
    level: float = LEVEL,
    paired_t: bool = False,
    eligible: Collection[float] | None = None,
) -> list[CandidateStats]:
    """`compare` on each candidate's `Scores`, every interval at `level`; `paired_t`: the gain's interval is the
    Student t interval (the held-out confirmation), not the bootstrap's; `eligible`: the candidates the best is
    sought among (`behind_best` measures from it; a guard leaves the others out), every one when None."""
    scores = dict(sorted(scores.items()))
    base = scores[baseline]
    boot = Bootstrap(len(base.rewards), draws, seed, level)
    means = {a: s.prompt_rewards for a, s in scores.items()}
    gains = {a: means[a] - means[baseline] for a in scores if a != baseline}
    joint = simultaneous(boot, gains)
    allowed = [a for a in means if eligible is None or a in eligible or a == baseline]
    leaders = [a for a in gains if joint[a].low > 0 and a in allowed]  # significantly better than the baseline
    best = max(leaders or allowed, key=lambda a: float(np.mean(means[a])))
    behind = simultaneous(boot, {a: means[best] - means[a] for a in scores if a != best})
    base_length = float(np.mean(base.lengths))
    stats = []
    for alpha, s in scores.items():
        length_gains = s.prompt_lengths - base.prompt_lengths
        gains_of = means[alpha] - means[baseline]
        kept = ~(s.truncated.any(axis=1) | base.truncated.any(axis=1))
        mean_length = float(np.mean(s.lengths))
        stats.append(
            CandidateStats(
                alpha=alpha,
                reward=boot.mean(means[alpha]),
                gain=t_interval(gains_of, level) if paired_t else boot.mean(gains_of),
                gain_simultaneous=joint.get(alpha, Interval(0.0, 0.0, 0.0)),
                behind_best=behind.get(alpha, Interval(0.0, 0.0, 0.0)),
                win_rate=boot.mean(win_credit(means[alpha], means[baseline])),
                win_rate_responses=boot.mean(win_credit(s.rewards, base.rewards).mean(axis=1)),
                length=mean_length,
                length_interval=boot.mean(s.prompt_lengths),
                length_change=mean_length / base_length - 1 if base_length > 0 else 0.0,
                gain_at_equal_length=boot.length_adjusted(means[alpha] - means[baseline], length_gains, kept),
                gain_without_cut=t_interval(gains_of[kept], level) if paired_t else _mean_over(boot, gains_of, kept),
                truncated=float(np.mean(s.truncated)),
                length_fit_prompts=int(kept.sum()),
            )
        )
    return stats


def _mean_over(bootstrap: Bootstrap, values: np.ndarray, kept: np.ndarray) -> Interval:
    """The mean of `values` over the `kept` prompts, resampled with the shared resamples (a resample that keeps none
    is left out)."""
    if not kept.any():
        return NO_INTERVAL
    weights = kept[bootstrap.indices].astype(np.float64)
    sums = weights.sum(axis=1)
    replicates = (np.asarray(values, dtype=np.float64)[bootstrap.indices] * weights).sum(axis=1)
    usable = sums > 0
    return bootstrap.interval(float(np.mean(values[kept])), replicates[usable] / sums[usable])
