"""Constructed rewards whose answer is known, for the decision rule's error rates and power (simulation tests and
`dev/simulate_tune.py`).

Each prompt i's reward for candidate α and sample s is

    prompt effectᵢ + gain(α) + interactionᵢ,α + noiseᵢ,α,s

with prompt effects of SD 1 (they cancel in paired comparisons), interactions of SD 0.5 and sampling noise of SD 1
averaged over 4 samples: the per-prompt gain of any α over α = 0 then has SD exactly 1, so `gain(α)` is in SDs of
the per-prompt gain, the unit of `expo_cli.tuning.decision.power`. Every value is seeded by (run, α), so α = 0
evaluated twice is the same candidate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from expo_cli.tuning.backends.generation import Response
from expo_cli.tuning.decision.candidate import Candidate
from expo_cli.tuning.decision.holdout import Split, split

SAMPLES = 4
INTERACTION = 0.5
NOISE = 1.0


def constructed(
    gain: Callable[[float], float],
    seed: int,
    prompts: int = 200,
    holdout: float = 0.3,
    samples: int = SAMPLES,
    cut: Callable[[float], float] = lambda alpha: 0.0,
    held_out_gain: Callable[[float], float] | None = None,
) -> tuple[Callable[[float, str], Candidate], Split]:
    """(evaluate(α, part), the split) for `prompts` prompts; `cut(α)`: the share of responses cut at the limit;
    `held_out_gain`: the gain on the held-out prompts when it differs (a selection's gain that does not carry
    over)."""
    parts = split(prompts, holdout, seed, warn=lambda message: None)
    effects = np.random.default_rng([seed, 0]).normal(size=prompts)
    noise = NOISE * np.sqrt(samples / SAMPLES)  # the per-prompt gain keeps SD 1 whatever the samples

    def evaluate(alpha: float, part: str) -> Candidate:
        rng = np.random.default_rng([seed, 1, round(alpha * 1e6) + 10**9])
        true = gain if part == "selection" or held_out_gain is None else held_out_gain
        values = effects[:, None] + true(alpha) + INTERACTION * rng.normal(size=(prompts, 1))
        values = values + noise * rng.normal(size=(prompts, samples))
        cuts = rng.random((prompts, samples)) < cut(alpha)
        members = parts.selection if part == "selection" else parts.confirmation
        responses = [
            Response(p, s, "", 10, "length" if cuts[p, s] else "stop") for p in members for s in range(samples)
        ]
        rewards = [float(values[p, s]) for p in members for s in range(samples)]
        return Candidate(alpha, part, responses, rewards, 0.0, 0.0, 0.0, len(responses), 0)

    return evaluate, parts
