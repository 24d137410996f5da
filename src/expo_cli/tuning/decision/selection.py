"""Which α to recommend, and whether held-out prompts confirm it.

The rule, on the selection prompts: a candidate qualifies when its gain over α = 0 is significant among all the
candidates compared (simultaneous intervals). Of those, the best (highest mean reward) is chosen, unless a smaller α
is shown to be as good: its simultaneous interval behind the best stays under a practical-equivalence margin (by
default 20% of the best gain). "Not significantly worse" is not "as good": with few prompts every interval is wide,
and that weaker rule drifted to the smallest α however much it lost. When none qualifies, the aligned model (α = 0)
is the answer.

The choice was the best of several on the same prompts, so its gain there is inflated (the winner's curse). Only α = 0
and the chosen α are then generated on the held-out prompts, and that single paired comparison (its 95% interval
excludes 0) is the confirmation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ...errors import UsageError
from .guard import GuardVerdict
from .looks import Look, false_confirmation_bound
from .statistics import CandidateStats

LONGER = 0.2  # warn when the chosen α lengthens responses by more than this fraction
TRUNCATED = 0.05  # warn when more responses than this are cut at --max-new-tokens
RULE = (
    "among the α whose gain over α = 0 is significant among all candidates (simultaneous 95% intervals), the best, "
    "or the smallest shown to be within the margin of it (its simultaneous interval behind the best under the "
    "margin); α = 0 when none is significant"
)


@dataclass(frozen=True)
class Margin:
    """How much less than the best gain still counts as "as good": a share of the best gain, or reward units."""

    value: float
    relative: bool  # a share of the best candidate's gain over α = 0

    @classmethod
    def parse(cls, text: str | Margin) -> Margin:
        """ "20%" (a share of the best gain) or "0.05" (reward units)."""
        if isinstance(text, Margin):
            return text
        share = text.strip().endswith("%")
        try:
            value = float(text.strip().removesuffix("%"))
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value < 0 or (share and value >= 100):
            raise UsageError(
                f"--margin {text!r}: a share of the best gain such as 20%, or a reward difference such as 0.05"
            )
        return cls(value / 100 if share else value, share)

    def of(self, best_gain: float) -> float:
        """The margin in reward units, for a best gain of `best_gain`."""
        return self.value * best_gain if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value:.0%} of the best gain" if self.relative else f"{self.value:g} reward"


DEFAULT_MARGIN = Margin(0.2, relative=True)


@dataclass(frozen=True)
class Recommendation:
    alpha: float
    reason: str
    warnings: list[str] = field(default_factory=list)
    margin: str = str(DEFAULT_MARGIN)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def recommend(
    stats: Sequence[CandidateStats],
    margin: Margin = DEFAULT_MARGIN,
    baseline: float = 0.0,
    excluded: Mapping[float, str] | None = None,
) -> Recommendation:
    """The recommendation by `RULE` among `stats` (one per candidate, the baseline included), none of the
    `excluded` (α: why, a guard's verdict) chosen."""
    excluded = excluded or {}
    others = [s for s in stats if s.alpha != baseline]
    better = [s for s in others if s.significant and s.alpha not in excluded]
    warnings = truncation_warnings(stats)
    if excluded:
        warnings.append("excluded by the guard: " + "; ".join(f"α={a:g} ({why})" for a, why in excluded.items()))
    if not better:
        best = max(others, key=lambda s: s.reward.estimate, default=None)
        why = f"the best, α={best.alpha:g}, gains {best.gain_simultaneous}, " if best else ""
        if any(s.significant for s in others):
            return Recommendation(
                baseline,
                f"every candidate that beats the aligned model (α=0) significantly loses more than the guard allows "
                f"({', '.join(f'α={s.alpha:g}' for s in others if s.significant)})",
                warnings,
                str(margin),
            )
        return Recommendation(
            baseline,
            f"no candidate beats the aligned model (α=0) significantly: {why}an interval that includes 0 once "
            f"all {len(others)} candidate(s) are allowed for",
            warnings,
            str(margin),
        )
    best = max(better, key=lambda s: s.reward.estimate)
    allowed = margin.of(best.gain.estimate)
    close = [s for s in better if s is best or s.behind_best.high <= allowed]
    chosen = min(close, key=lambda s: s.alpha)
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
        which = (
            f"is the smallest shown to be within the margin ({margin}: {allowed:.4g}) of the best of them, "
            f"α={best.alpha:g}: behind it by {chosen.behind_best}"
        )
    elif len(better) > 1:
        which = f"is the best of them, no smaller one shown to be within the margin of it ({margin}: {allowed:.4g})"
    else:
        which = "is the one"
    reason = (
        f"{len(better)} of {len(others)} candidate(s) beat α=0 significantly (simultaneous intervals); "
        f"α={chosen.alpha:g} {which}: gain {chosen.gain_simultaneous}, win rate {chosen.win_rate.estimate:.0%}"
    )
    return Recommendation(chosen.alpha, reason, warnings, str(margin))


def truncation_warnings(stats: Sequence[CandidateStats], part: str = "selection") -> list[str]:
    """A warning when more than `TRUNCATED` of a candidate's responses on `part` were cut."""
    cut = [s for s in stats if s.truncated > TRUNCATED]
    if not cut:
        return []
    rates = ", ".join(f"α={s.alpha:g}: {s.truncated:.0%}" for s in cut)
    return [
        f"responses cut at --max-new-tokens or to fit the reward model on the {part} prompts ({rates}): a cut "
        "response is scored as if complete; raise --max-new-tokens (the gain without cut answers is in the results)"
    ]


@dataclass(frozen=True)
class Confirmation:
    """α = 0 against the chosen α on prompts the choice never saw."""

    alpha: float
    prompts: int
    stats: CandidateStats | None  # None: nothing to confirm (α = 0 chosen, or no held-out prompts)
    note: str
    look: Look | None = None  # which look at the held-out prompts this test was (`looks`)
    baseline: CandidateStats | None = None  # α = 0 on the held-out prompts
    primary: CandidateStats | None = None  # with a --confirm-reward: the selection reward's gain there
    guard: GuardVerdict | None = None  # with a --guard: the chosen α's guard on its held-out documents

    @property
    def confirmed(self) -> bool:
        return self.stats is not None and self.stats.gain.low > 0 and (self.guard is None or self.guard.held)

    def guarded(self, verdict: GuardVerdict, name: str) -> Confirmation:
        """This verdict with the guard's on its held-out documents: confirmed only when both hold."""
        return replace(self, guard=verdict, note=f"{self.note}; {verdict.note(name)}")

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.look is not None:
            found["look"] = {"number": self.look.number, "level": self.look.level, "repeated": self.look.repeated}
        if self.stats is not None:
            found["stats"] = self.stats.to_json()
            found["cut"] = {
                "alpha_0": self.baseline.truncated if self.baseline else None,
                "chosen": self.stats.truncated,
            }
        if self.primary is not None:
            found["selection_reward_stats"] = self.primary.to_json()
        if self.guard is not None:
            found["guard"] = self.guard.to_json()
        return {"alpha": self.alpha, "prompts": self.prompts, "confirmed": self.confirmed, "note": self.note, **found}


def confirmation(
    alpha: float,
    prompts: int,
    stats: CandidateStats | None,
    look: Look | None = None,
    baseline: CandidateStats | None = None,
    primary: CandidateStats | None = None,
) -> Confirmation:
    """The verdict on held-out prompts, with a sentence that says it (`primary`: the selection reward's gain when
    a second reward judged)."""
    if stats is None:
        note = (
            "nothing was confirmed: no prompts were held out (--holdout; the default holds out 30% from 100 prompts "
            "on)"
            if prompts == 0
            else "nothing to confirm: α = 0 was chosen"
        )
        return Confirmation(alpha, prompts, None, note, look, baseline)
    tested = ""
    if look is not None and look.number > 1:
        tested = (
            f" (look {look.number} at these prompts: a {look.level:.3%} interval, so that all "
            f"{look.number} looks together confirm a choice with no real gain at most "
            f"{false_confirmation_bound(look.number):.2%} of the time)"
        )
    by = " by --confirm-reward" if primary is not None else ""
    if stats.gain.low > 0:
        note = (
            f"confirmed on {prompts} held-out prompts{by}{tested}: gain {stats.gain}, win rate "
            f"{stats.win_rate.estimate:.0%}"
        )
    else:
        why = (
            "the selection's reward may have been over-optimised"
            if primary is not None
            else "the selection's gain was partly luck, or the held-out prompts are too few to show it"
        )
        where = "includes 0" if stats.gain.high >= 0 else "lies below 0"
        note = f"not confirmed on {prompts} held-out prompts{by}{tested}: gain {stats.gain} {where} ({why})"
    if primary is not None:
        note += f"; the selection's reward there: gain {primary.gain}"
    return Confirmation(alpha, prompts, stats, note, look, baseline, primary)
