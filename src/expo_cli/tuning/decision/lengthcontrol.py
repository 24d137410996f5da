"""The length-controlled win rate of a pairwise judge, in the manner of AlpacaEval 2.

A judge's preference for the candidate over α = 0 on prompt i (its credit over both orders and every sample, in
[0, 1]) is modelled as a logistic GLM on the length difference, squashed as AlpacaEval does:

    P(candidate preferred)ᵢ = σ(θ + φ·tanh(Δlenᵢ / sd(Δlen)))

fitted by maximum likelihood (fractional outcomes: ties and split verdicts count as such). σ(θ) is the win rate the
model predicts at equal length: the share of the raw win rate that longer answers do not explain. Its interval comes
from the same paired bootstrap over prompts as every other statistic (each resample refitted).
"""

from __future__ import annotations

import numpy as np

from .statistics import Bootstrap, Interval

ITERATIONS = 25
RIDGE = 1e-4  # keeps θ finite when every verdict goes one way


def length_controlled(preference: np.ndarray, length_difference: np.ndarray, bootstrap: Bootstrap) -> Interval:
    """σ(θ) of the GLM above, with its bootstrap interval: `preference` and `length_difference` per prompt."""
    y = np.asarray(preference, dtype=np.float64)
    difference = np.asarray(length_difference, dtype=np.float64)
    spread = float(np.std(difference))
    x = np.tanh(difference / spread) if spread > 0 else np.zeros_like(y)
    estimate = _fit(x[None, :], y[None, :])[0]
    resampled = _fit(x[bootstrap.indices], y[bootstrap.indices])
    return bootstrap.interval(float(estimate), resampled)


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """σ(θ) per row of (x, y), by Newton's method on the penalised log-likelihood (vectorised over rows)."""
    theta = np.zeros(len(x))
    phi = np.zeros(len(x))
    for _ in range(ITERATIONS):
        p = 1 / (1 + np.exp(-(theta[:, None] + phi[:, None] * x)))
        w = p * (1 - p)
        r = y - p
        g0 = r.sum(axis=1) - RIDGE * theta
        g1 = (r * x).sum(axis=1) - RIDGE * phi
        h00 = w.sum(axis=1) + RIDGE
        h01 = (w * x).sum(axis=1)
        h11 = (w * x * x).sum(axis=1) + RIDGE
        det = h00 * h11 - h01 * h01
        theta = theta + (h11 * g0 - h01 * g1) / det
        phi = phi + (h00 * g1 - h01 * g0) / det
    return 1 / (1 + np.exp(-theta))
