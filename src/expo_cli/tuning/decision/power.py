"""How large a gain a tune can find and confirm with its prompts: said before generating, recorded in the result.

The unit is the SD of the per-prompt gain (a prompt's mean reward under α minus under α = 0), the only spread a
paired comparison sees; it is known once α = 0 and one candidate are scored, and then turned into reward units.
A gain δ is found on n_s selection prompts when its simultaneous interval over K candidates excludes 0, and then
confirmed on n_h held-out prompts when its 95% interval does. With a normal approximation,

    power(δ) ≈ Φ(δ·√n_s − c_K) · Φ(δ·√n_h − 1.96),    c_K the two-sided Šidák critical value for K intervals,

which ignores that the candidates' gains are correlated (c_K is then a little too large: the power a little too
low). tests/test_selection.py checks it against the whole procedure run on simulated rewards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

NORMAL = NormalDist()
POWER = 0.8
TARGET = 0.3  # the gain, in SDs of the per-prompt gain, that the prompt-count advice is for (--target-gain)
LEVEL = 0.95


def critical(candidates: int) -> float:
    """The two-sided critical value of `candidates` simultaneous 95% intervals (Šidák)."""
    per_interval = 1 - LEVEL ** (1 / max(candidates, 1))
    return NORMAL.inv_cdf(1 - per_interval / 2)


def power(effect: float, selection: int, held_out: int, candidates: int) -> float:
    """The chance that a gain of `effect` SDs is found on `selection` prompts among `candidates` and confirmed on
    `held_out` prompts (0 when nothing is held out: nothing can be confirmed)."""
    if held_out == 0 or selection == 0:
        return 0.0
    found = NORMAL.cdf(effect * math.sqrt(selection) - critical(candidates))
    return found * NORMAL.cdf(effect * math.sqrt(held_out) - NORMAL.inv_cdf(1 - (1 - LEVEL) / 2))


def detectable(selection: int, held_out: int, candidates: int, target: float = POWER) -> float:
    """The smallest gain, in SDs, found and confirmed with probability `target` (inf when none is)."""
    if power(1e3, selection, held_out, candidates) < target:
        return math.inf
    low, high = 0.0, 1e3
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if power(middle, selection, held_out, candidates) < target else (low, middle)
    return high


def prompts_for(effect: float, candidates: int, fraction: float, target: float = POWER) -> int:
    """The fewest prompts, split with `fraction` held out, that find and confirm a gain of `effect` SDs with
    probability `target`."""
    fraction = fraction or 0.3

    def enough(count: int) -> bool:
        held = round(fraction * count)
        return power(effect, count - held, held, candidates) >= target

    high = 2
    while not enough(high):
        high *= 2
        if high > 10**9:
            return high
    low = high // 2
    while high - low > 1000:  # bisect a far bound down, then the last steps one by one
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return next(n for n in range(low + 1, high + 1) if enough(n))


@dataclass(frozen=True)
class Power:
    """What a run's prompts can find: before generating, and with the per-prompt gain's SD once it is known."""

    selection: int
    held_out: int
    candidates: int
    fraction: float
    target: float = TARGET  # the gain the prompt-count advice is for

    @property
    def detectable(self) -> float:
        return detectable(self.selection, self.held_out, self.candidates)

    def advice(self) -> str:
        """One line, said before generating."""
        if not self.held_out:
            needed = prompts_for(self.target, self.candidates, 0.3)
            return (
                f"power: nothing is held out, so no choice can be confirmed; with --holdout 0.3, {needed} prompts "
                f"find and confirm a gain of {self.target:g} SD of the per-prompt gain in 80% of runs"
            )
        needed = prompts_for(self.target, self.candidates, self.fraction)
        return (
            f"power: {self.selection} selection and {self.held_out} held-out prompts, {self.candidates} candidate(s): "
            f"a gain of {self.detectable:.2f} SD of the per-prompt gain is found and confirmed in 80% of runs; "
            f"{self.target:g} SD (--target-gain) needs about {needed} prompts"
        )

    def to_json(self, spread: float | None) -> dict[str, float | int | None]:
        """With `spread`, the SD of the per-prompt gain measured on the selection prompts (reward units)."""
        found = self.detectable
        return {
            "power": POWER,
            "detectable_sd": found if math.isfinite(found) else None,
            "gain_sd": spread,
            "detectable_reward": found * spread if spread is not None and math.isfinite(found) else None,
            "target_sd": self.target,
            "prompts_for_target": prompts_for(self.target, self.candidates, self.fraction),
        }
