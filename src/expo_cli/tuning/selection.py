"""Which α to recommend, and whether held-out prompts confirm it.

The rule, on the selection prompts: a candidate qualifies when its gain over α = 0 is significant among all the
candidates compared (simultaneous intervals) and it is not significantly worse than the best such candidate; of those,
the smallest α is chosen (a larger α risks degenerate text for no gain the prompts can measure). When none
qualifies, the aligned model (α = 0) is the answer.

The choice was the best of several on the same prompts, so its gain there is inflated (the winner's curse). Only α = 0
and the chosen α are then generated on the held-out prompts, and that single paired comparison (its 95% interval
excludes 0) is the confirmation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .statistics import CandidateStats

LONGER = 0.2  # warn when the chosen α lengthens responses by more than this fraction
TRUNCATED = 0.05  # warn when more responses than this are cut at --max-new-tokens
RULE = (
    "the smallest α whose gain over α = 0 is significant among all candidates (simultaneous 95% intervals) and "
    "that is not significantly worse than the best such α; α = 0 when none is"
)


@dataclass(frozen=True)
class Recommendation:
    alpha: float
    reason: str
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def recommend(stats: Sequence[CandidateStats], baseline: float = 0.0) -> Recommendation:
    """The recommendation by `RULE` among `stats` (one per candidate, the baseline included)."""
    others = [s for s in stats if s.alpha != baseline]
    better = [s for s in others if s.significant]
    warnings = truncation_warnings(stats)
    if not better:
        best = max(others, key=lambda s: s.reward.estimate, default=None)
        why = f"the best, α={best.alpha:g}, gains {best.gain_simultaneous}, " if best else ""
        return Recommendation(
            baseline,
            f"no candidate beats the aligned model (α=0) significantly: {why}an interval that includes 0 once "
            f"all {len(others)} candidate(s) are allowed for",
            warnings,
        )
    close = [s for s in better if s.behind_best.low <= 0]
    chosen = min(close, key=lambda s: s.alpha) if close else max(better, key=lambda s: s.reward.estimate)
    best = max(better, key=lambda s: s.reward.estimate)
    equal = chosen.gain_at_equal_length
    if not math.isnan(equal.estimate) and not equal.low > 0:
        warnings.append(
            f"at α={chosen.alpha:g} the gain at equal length, {chosen.gain_at_equal_length}, is not "
            "significant: longer responses may explain most of it"
        )
    if chosen.length_change > LONGER:
        warnings.append(f"α={chosen.alpha:g} makes responses {100 * chosen.length_change:.0f}% longer than α=0")
    if chosen.alpha == max(s.alpha for s in stats):
        warnings.append(f"α={chosen.alpha:g} is the largest α tried: a larger one may be better still")
    if best is not chosen:
        which = f"is the smallest not significantly behind the best of them, α={best.alpha:g}"
    elif len(better) > 1:
        which = "is the best of them, every smaller one significantly behind it"
    else:
        which = "is the one"
    reason = (
        f"{len(better)} of {len(others)} candidate(s) beat α=0 significantly (simultaneous intervals); "
        f"α={chosen.alpha:g} {which}: gain {chosen.gain_simultaneous}, win rate {chosen.win_rate.estimate:.0%}"
    )
    return Recommendation(chosen.alpha, reason, warnings)


def truncation_warnings(stats: Sequence[CandidateStats]) -> list[str]:
    cut = [s for s in stats if s.truncated > TRUNCATED]
    if not cut:
        return []
    rates = ", ".join(f"α={s.alpha:g}: {s.truncated:.0%}" for s in cut)
    return [
        f"responses cut at --max-new-tokens ({rates}): a cut response is scored as if complete; raise --max-new-tokens"
    ]


@dataclass(frozen=True)
class Confirmation:
    """α = 0 against the chosen α on prompts the choice never saw."""

    alpha: float
    prompts: int
    stats: CandidateStats | None  # None: nothing to confirm (α = 0 chosen, or no held-out prompts)
    note: str

    @property
    def confirmed(self) -> bool:
        return self.stats is not None and self.stats.gain.low > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "prompts": self.prompts,
            "confirmed": self.confirmed,
            "note": self.note,
            **({"stats": self.stats.to_json()} if self.stats else {}),
        }


def confirmation(alpha: float, prompts: int, stats: CandidateStats | None) -> Confirmation:
    """The verdict on held-out prompts, with a sentence that says it."""
    if stats is None:
        note = (
            "nothing was confirmed: no prompts were held out (--holdout 0; the default holds out 30% from 100 "
            "prompts on)"
            if prompts == 0
            else "nothing to confirm: α = 0 was chosen"
        )
        return Confirmation(alpha, prompts, None, note)
    if stats.gain.low > 0:
        note = f"confirmed on {prompts} held-out prompts: gain {stats.gain}, win rate {stats.win_rate.estimate:.0%}"
    else:
        note = (
            f"not confirmed on {prompts} held-out prompts: gain {stats.gain} includes 0 (the selection's gain was "
            "partly luck, or the held-out prompts are too few to show it)"
        )
    return Confirmation(alpha, prompts, stats, note)
