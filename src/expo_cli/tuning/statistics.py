"""The statistics behind a chosen α: paired bootstrap over prompts, win rate, and how much of a gain is length.

The unit of resampling is the prompt (samples of one prompt are averaged first): a 95% percentile bootstrap
(Koehn 2004) over prompt indices, the same resamples for every candidate, so that a candidate's difference from
α = 0 is judged on paired data. A gain is significant when its interval excludes 0.

Length: ExPO tends to lengthen answers (the paper's raw win rates always gain more than its length-controlled
ones). The per-prompt gain dᵢ is regressed on tanh(Δlenᵢ / sd(Δlen)) (the shape of AlpacaEval's length-controlled
GLM), and the intercept, the gain at equal length, is reported with its bootstrap interval beside the raw gain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DRAWS = 10_000
PERCENTILES = (2.5, 97.5)  # a 95% interval: the central 95% of the resamples, written exactly
LONGER = 0.2  # warn when the chosen α lengthens responses by more than this fraction


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.estimate:+.4g} [{self.low:+.4g}, {self.high:+.4g}]"


class Bootstrap:
    """Resamples of prompt indices, drawn once and shared by every statistic and candidate."""

    def __init__(self, prompts: int, draws: int = DRAWS, seed: int = 0) -> None:
        self.indices = np.random.default_rng(seed).integers(0, prompts, size=(draws, prompts), dtype=np.int64)

    def interval(self, estimate: float, replicates: np.ndarray) -> Interval:
        low, high = np.percentile(replicates, PERCENTILES)
        return Interval(float(estimate), float(low), float(high))

    def mean(self, values: np.ndarray) -> Interval:
        values = np.asarray(values, dtype=np.float64)
        return self.interval(values.mean(), values[self.indices].mean(axis=1))

    def length_adjusted(self, gains: np.ndarray, length_gains: np.ndarray) -> Interval:
        """The intercept b₀ of dᵢ = b₀ + b₁·tanh(Δlenᵢ/sd(Δlen)): the gain not explained by length."""
        gains = np.asarray(gains, dtype=np.float64)
        spread = float(np.std(length_gains))
        x = np.tanh(np.asarray(length_gains, dtype=np.float64) / spread) if spread > 0 else np.zeros_like(gains)
        return self.interval(
            _intercept(x[None, :], gains[None, :])[0], _intercept(x[self.indices], gains[self.indices])
        )


def _intercept(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise OLS intercept of y on x (the mean of y where x does not vary)."""
    mx, my = x.mean(axis=1, keepdims=True), y.mean(axis=1, keepdims=True)
    var = ((x - mx) ** 2).sum(axis=1)
    cov = ((x - mx) * (y - my)).sum(axis=1)
    slope = np.divide(cov, var, out=np.zeros_like(cov), where=var > 1e-12)
    return my[:, 0] - slope * mx[:, 0]


def per_prompt(values: Sequence[float], prompts: Sequence[int], count: int) -> np.ndarray:
    """The mean of each prompt's samples."""
    sums = np.bincount(np.asarray(prompts), weights=np.asarray(values, dtype=np.float64), minlength=count)
    return sums / np.bincount(np.asarray(prompts), minlength=count)


def win_credit(candidate: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Per prompt: 1 for a win over the baseline, ½ for a tie, 0 for a loss (AlpacaEval's draw credit)."""
    return np.where(candidate > baseline, 1.0, np.where(candidate == baseline, 0.5, 0.0))


@dataclass(frozen=True)
class CandidateStats:
    alpha: float
    reward: Interval  # mean reward over prompts
    gain: Interval  # paired difference against α = 0
    win_rate: Interval  # against α = 0, per prompt
    length: float  # mean response length in tokens
    length_change: float  # relative to α = 0
    gain_at_equal_length: Interval

    @property
    def significant(self) -> bool:
        return self.gain.low > 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def compare(
    rewards: dict[float, np.ndarray],
    lengths: dict[float, np.ndarray],
    baseline: float = 0.0,
    draws: int = DRAWS,
    seed: int = 0,
) -> list[CandidateStats]:
    """Statistics of every candidate (per-prompt rewards and lengths) against the baseline's, sorted by α."""
    base_reward, base_length = rewards[baseline], lengths[baseline]
    boot = Bootstrap(len(base_reward), draws, seed)
    stats = []
    for alpha in sorted(rewards):
        gains, length_gains = rewards[alpha] - base_reward, lengths[alpha] - base_length
        mean_length = float(np.mean(lengths[alpha]))
        stats.append(
            CandidateStats(
                alpha=alpha,
                reward=boot.mean(rewards[alpha]),
                gain=boot.mean(gains),
                win_rate=boot.mean(win_credit(rewards[alpha], base_reward)),
                length=mean_length,
                length_change=mean_length / float(np.mean(base_length)) - 1 if np.mean(base_length) > 0 else 0.0,
                gain_at_equal_length=boot.length_adjusted(gains, length_gains),
            )
        )
    return stats


@dataclass(frozen=True)
class Recommendation:
    alpha: float
    reason: str
    warnings: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def recommend(stats: Sequence[CandidateStats], baseline: float = 0.0) -> Recommendation:
    """The best mean reward among candidates whose gain over the baseline is significant; else the baseline."""
    better = [s for s in stats if s.alpha != baseline and s.significant]
    tried = len(stats) - 1
    if not better:
        best = max((s for s in stats if s.alpha != baseline), key=lambda s: s.reward.estimate, default=None)
        why = f"the best, α={best.alpha:g}, gains {best.gain}, " if best else ""
        return Recommendation(
            baseline,
            f"no candidate beats the aligned model (α=0) significantly: {why}"
            f"an interval that includes 0 ({tried} candidate(s) tried)",
            [],
        )
    chosen = max(better, key=lambda s: s.reward.estimate)
    warnings = []
    if not chosen.gain_at_equal_length.low > 0:
        warnings.append(
            f"at α={chosen.alpha:g} the gain at equal length, {chosen.gain_at_equal_length}, is not "
            "significant: longer responses may explain most of it"
        )
    if chosen.length_change > LONGER:
        warnings.append(f"α={chosen.alpha:g} makes responses {100 * chosen.length_change:.0f}% longer than α=0")
    if chosen.alpha == max(s.alpha for s in stats):
        warnings.append(f"α={chosen.alpha:g} is the largest α tried: a larger one may be better still")
    reason = (
        f"the highest mean reward, {chosen.reward.estimate:.4g}, among the {len(better)} candidate(s) whose "
        f"gain over α=0 is significant ({chosen.gain}, win rate {chosen.win_rate.estimate:.0%}); chosen "
        f"as the best of {tried} on the same prompts, so confirm it on held-out prompts"
    )
    return Recommendation(chosen.alpha, reason, warnings)
