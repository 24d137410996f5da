"""Which α to try next: the grid, then (with `--search`) a golden-section refinement around its best point.

Reward along α rises, peaks and falls (the paper's optima span 0.1-25), so the best grid point and its neighbours
bracket the peak. Each refinement step probes the golden point of the bracket's larger side, which shrinks the
bracket by about 0.618 per evaluation whatever the outcome; a best point at the grid's largest α extends the
search outwards (doubling) instead.

It stops, and says why (`stopped`):
- "budget": `budget` candidates evaluated;
- "bracket": the bracket around the best point is narrower than `tolerance`;
- "noise floor": the best point and its better neighbour differ by less than the prompts can tell (their paired
  interval contains 0), so a point between them cannot be told apart either; when doubling, the best point does not
  beat the one before it significantly, so the rise may be noise;
- "degeneration": the best point's text degenerates (`degenerate(α)`: cut or repetitive responses jump), so going
  further out only makes slower, worse models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

GOLDEN = 0.3819660112501051  # 2 - φ: the golden section of an interval, from its nearer end
DEFAULT_EXTRA = 4  # --search without --budget: this many candidates beyond the grid


class Search:
    def __init__(
        self,
        grid: Sequence[float],
        budget: int | None = None,
        tolerance: float = 0.02,
        indistinguishable: Callable[[float, float], bool] | None = None,
        degenerate: Callable[[float], bool] | None = None,
    ) -> None:
        self.grid = list(dict.fromkeys(grid))
        self.budget = budget if budget is not None else len(self.grid)
        self.tolerance = tolerance
        self.indistinguishable = indistinguishable
        self.degenerate = degenerate
        self.scores: dict[float, float] = {}
        self.stopped: str | None = None

    def record(self, alpha: float, score: float) -> None:
        self.scores[alpha] = score

    def next(self) -> float | None:
        """The next α to evaluate, or None when done (`stopped` says why)."""
        for alpha in self.grid:
            if alpha not in self.scores:
                return alpha
        proposal = self._proposal()
        if proposal is None:
            return None
        if proposal in self.scores:  # rounding met a point already tried: the bracket is as narrow as α is written
            self.stopped = "bracket"
            return None
        return proposal

    def _proposal(self) -> float | None:
        if len(self.scores) >= self.budget:
            self.stopped = "budget" if self.budget > len(self.grid) else "grid"
            return None
        tried = sorted(self.scores)
        best = max(tried, key=lambda a: self.scores[a])
        i = tried.index(best)
        neighbours = [tried[j] for j in (i - 1, i + 1) if 0 <= j < len(tried)]
        if not neighbours:
            self.stopped = "grid"
            return None
        if best == tried[-1]:  # still rising at the largest α tried: look further out
            if self.degenerate and self.degenerate(best):
                self.stopped = "degeneration"
                return None
            if self.indistinguishable and self.indistinguishable(best, tried[i - 1]):
                self.stopped = "noise floor"
                return None
            return _written(2 * best if best > 0 else 1.0)
        low, high = tried[max(i - 1, 0)], tried[i + 1]
        if high - low < self.tolerance * max(1.0, abs(best)):
            self.stopped = "bracket"
            return None
        if self.indistinguishable and self.indistinguishable(best, max(neighbours, key=self.scores.__getitem__)):
            self.stopped = "noise floor"
            return None
        if high - best >= best - low:
            return _written(best + GOLDEN * (high - best))
        return _written(best - GOLDEN * (best - low))


def _written(alpha: float) -> float:
    """α as it is printed and recorded: 4 significant digits."""
    return float(f"{alpha:.4g}")
