"""Which α to try next: the grid, then (with `--search`) a golden-section refinement around its best point.

Reward along α rises, peaks and falls (the paper's optima span 0.1-25), so the best grid point and its neighbours
bracket the peak. Each refinement step probes the golden point of the bracket's larger side, which shrinks the
bracket by about 0.618 per evaluation whatever the outcome; a best point at the grid's largest α extends the
search outwards (doubling) instead. It stops at the budget, when the bracket is narrower than `tolerance`, or at the
noise floor: when `indistinguishable(best, neighbour)` says the best point and its better neighbour differ by less
than the prompts can tell (their paired interval contains 0), a point between them cannot be told apart either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

GOLDEN = 0.3819660112501051  # 2 - φ: the golden section of an interval, from its nearer end


class Search:
    def __init__(
        self,
        grid: Sequence[float],
        budget: int | None = None,
        tolerance: float = 0.02,
        indistinguishable: Callable[[float, float], bool] | None = None,
    ) -> None:
        self.grid = list(dict.fromkeys(grid))
        self.budget = budget if budget is not None else len(self.grid)
        self.tolerance = tolerance
        self.indistinguishable = indistinguishable
        self.scores: dict[float, float] = {}

    def record(self, alpha: float, score: float) -> None:
        self.scores[alpha] = score

    def next(self) -> float | None:
        """The next α to evaluate, or None when done."""
        for alpha in self.grid:
            if alpha not in self.scores:
                return alpha
        if len(self.scores) >= self.budget:
            return None
        tried = sorted(self.scores)
        best = max(tried, key=lambda a: self.scores[a])
        i = tried.index(best)
        low, high = tried[max(i - 1, 0)], tried[min(i + 1, len(tried) - 1)]
        if best == high:  # still rising at the largest α tried: look further out
            proposal = 2 * best if best > 0 else 1.0
        elif high - low < self.tolerance * max(1.0, abs(best)):
            return None
        elif self.indistinguishable and self.indistinguishable(best, max((low, high), key=self.scores.__getitem__)):
            return None
        elif high - best >= best - low:
            proposal = best + GOLDEN * (high - best)
        else:
            proposal = best - GOLDEN * (best - low)
        proposal = float(f"{proposal:.4g}")
        return None if proposal in self.scores else proposal
