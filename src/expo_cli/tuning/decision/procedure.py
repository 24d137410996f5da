"""The tuning procedure, independent of how responses are made: search and choose on the selection prompts, then
confirm on the held-out ones.

`choose` is given `evaluate(α, part) -> Candidate` (generation and scoring, or constructed data in the tests) and
runs: the grid and the search on the selection part (every candidate), the statistics and the recommendation
there (`selection.RULE`, with its margin), then α = 0 and the chosen α on the confirmation part, whose paired gain
is the headline, tested at the level the held-out prompts' earlier looks leave (`looks`).

The search's degeneration test: compared with α = 0, the share of responses cut at --max-new-tokens or the share of
repeated word trigrams rises by more than `DEGENERATE` (20 points).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .candidate import CONFIRMATION, SELECTION, Candidate, NotGenerated
from .guard import Guard, GuardCheck, admissible
from .guard import held_out as guard_held_out
from .holdout import Split
from .looks import Ledger
from .search import Search
from .selection import DEFAULT_MARGIN, RULE, Confirmation, Margin, Recommendation, confirmation, recommend
from .statistics import DRAWS, LEVEL, Bootstrap, CandidateStats, compare_scores

DEGENERATE = 0.2
NOISE_DRAWS = 2000  # resamples behind the search's noise-floor test


@dataclass
class Outcome:
    selection: dict[float, Candidate]  # in the order evaluated
    stats: list[CandidateStats]  # on the selection part, sorted by α
    recommendation: Recommendation
    stopped: str  # why the search stopped
    confirmation: Confirmation
    held_out: dict[float, Candidate]  # α = 0 and the chosen α on the confirmation part (when any)
    guard: GuardOutcome | None = None


@dataclass
class GuardOutcome:
    """What a --guard found: every candidate's check on its selection documents, the candidates themselves (on
    both parts, for the records), and its name and limit."""

    name: str
    max_loss: float
    checks: dict[float, GuardCheck]
    candidates: list[Candidate]

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": self.name,
            "max_loss": self.max_loss,
            "candidates": [c.to_json() for c in self.checks.values()],
        }


def choose(
    evaluate: Callable[[float, str], Candidate],
    grid: list[float],
    budget: int,
    split: Split,
    seed: int,
    draws: int = DRAWS,
    margin: Margin = DEFAULT_MARGIN,
    ledger: Ledger | None = None,
    confirm: Callable[[float, str], Candidate] | None = None,
    guard: Guard | None = None,
) -> Outcome:
    """Search and choose on the selection prompts, then confirm on the held-out ones (a look `ledger` records;
    by default one that has seen no earlier look), judged by `confirm`'s reward when given (`--confirm-reward`:
    the same held-out responses scored by a second reward) and by the selection's reward otherwise; with a
    `guard`, only candidates it admits are chosen, and the choice is confirmed only where the guard holds too."""
    evaluated, stopped = _search(evaluate, grid, budget, split.selection, seed)

    def held_out(alpha: float) -> dict[float, Candidate]:
        return {a: evaluate(a, CONFIRMATION) for a in (0.0, alpha)}

    def judged(alpha: float) -> dict[float, Candidate]:
        assert confirm is not None
        return {a: confirm(a, CONFIRMATION) for a in (0.0, alpha)}

    return judge(evaluated, stopped, split, held_out, seed, draws, margin, ledger, judged if confirm else None, guard)


def judge(
    selection: dict[float, Candidate],
    stopped: str,
    split: Split,
    held_out: Callable[[float], dict[float, Candidate]],
    seed: int,
    draws: int = DRAWS,
    margin: Margin = DEFAULT_MARGIN,
    ledger: Ledger | None = None,
    judged: Callable[[float], dict[float, Candidate]] | None = None,
    guard: Guard | None = None,
) -> Outcome:
    """The statistics and the recommendation on the selection prompts, and the verdict of `held_out(α)` (α = 0 and
    the chosen α on the held-out prompts) when there is something to confirm, at the level of its look; with
    `judged` (the same responses under a second reward) the verdict is that reward's, the selection reward's
    held-out gain shown beside it."""
    checks: dict[float, GuardCheck] = {}
    guarded: list[Candidate] = []
    if guard is not None:
        guarded = [guard.evaluate(alpha, SELECTION) for alpha in sorted(selection)]
        checks = admissible({c.alpha: c for c in guarded}, guard.selection, guard.max_loss, seed, draws)
    excluded = {a: f"loss {c.loss} may exceed {guard.max_loss:g}" for a, c in checks.items() if not c.admissible}
    stats = _compare(selection, split.selection, seed, draws, eligible=[a for a in selection if a not in excluded])
    choice = recommend(stats, margin, excluded=excluded)
    confirming: dict[float, Candidate] = {}
    if choice.alpha == 0 or not split.confirmation:
        verdict = confirmation(choice.alpha, len(split.confirmation), None)
    else:
        ledger = ledger if ledger is not None else Ledger()
        try:
            confirming = held_out(choice.alpha)
            judging = judged(choice.alpha) if judged else confirming
        except NotGenerated as err:
            verdict = Confirmation(choice.alpha, len(split.confirmation), None, f"not confirmed: {err}")
        else:
            data = _digest(judging, split.confirmation)
            look = ledger.look(choice.alpha, data)
            pair = _compare(judging, split.confirmation, seed, draws, look.level, paired_t=True)
            primary = (
                _compare(confirming, split.confirmation, seed, draws, look.level, paired_t=True) if judged else None
            )
            verdict = confirmation(
                choice.alpha, len(split.confirmation), pair[1], look, pair[0], primary[1] if primary else None
            )
            ledger.record(look, choice.alpha, data, _look_outcome(verdict, margin, selection))
            if guard is not None and guard.confirmation:
                pair = {a: guard.evaluate(a, CONFIRMATION) for a in (0.0, choice.alpha)}
                guarded += pair.values()
                held = guard_held_out(pair[0.0], pair[choice.alpha], guard.confirmation, guard.max_loss)
                verdict = verdict.guarded(held, guard.name)
    found = GuardOutcome(guard.name, guard.max_loss, checks, guarded) if guard is not None else None
    return Outcome(selection, stats, choice, stopped, verdict, confirming, found)


def _digest(candidates: dict[float, Candidate], prompts: list[int]) -> str:
    """A digest of exactly the data a held-out test judges: each candidate's rewards, in (prompt, sample) order."""
    digest = hashlib.sha256()
    for alpha in sorted(candidates):
        digest.update(repr(alpha).encode() + candidates[alpha].scores(prompts).rewards.tobytes())
    return digest.hexdigest()[:16]


def _look_outcome(verdict: Confirmation, margin: Margin, selection: dict[float, Candidate]) -> dict[str, Any]:
    """What a look's record keeps besides its α, reward and level: the outcome and the settings that led to it."""
    assert verdict.stats is not None
    gain = verdict.stats.gain
    return {
        "confirmed": verdict.confirmed,
        "gain": [v if math.isfinite(v) else None for v in (gain.estimate, gain.low, gain.high)],
        "prompts": verdict.prompts,
        "candidates": sorted(selection),
        "margin": str(margin),
    }


def _compare(
    candidates: dict[float, Candidate],
    prompts: list[int],
    seed: int,
    draws: int,
    level: float = LEVEL,
    paired_t: bool = False,
    eligible: list[float] | None = None,
) -> list[CandidateStats]:
    scores = {a: c.scores(prompts) for a, c in candidates.items()}
    return compare_scores(scores, draws=draws, seed=seed, level=level, paired_t=paired_t, eligible=eligible)


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    """The choice, the confirmation and every candidate's statistics, as `--json` and the report show them."""
    candidates = outcome.selection
    return {
        "alpha": outcome.recommendation.alpha,
        "confirmed": outcome.confirmation.confirmed,
        "recommendation": {**outcome.recommendation.to_json(), "rule": RULE},
        "confirmation": outcome.confirmation.to_json(),
        "candidates": [
            {
                **s.to_json(),
                "repetition": candidates[s.alpha].repetition,
                "prompt_cut_for_reward": candidates[s.alpha].prompt_cut,
                "response_cut_for_reward": candidates[s.alpha].response_cut,
            }
            for s in outcome.stats
        ],
        "evaluated_order": list(candidates),
        "search": {"stopped": outcome.stopped},
        **({"guard": outcome.guard.to_json()} if outcome.guard else {}),
    }


def _search(
    evaluate: Callable[[float, str], Candidate], grid: list[float], budget: int, prompts: list[int], seed: int
) -> tuple[dict[float, Candidate], str]:
    """Evaluate the grid, then what `Search` asks for next, on the selection prompts; (candidates, why it stopped)."""
    evaluated: dict[float, Candidate] = {}

    def rewards(alpha: float) -> np.ndarray:
        return evaluated[alpha].scores(prompts).prompt_rewards

    def indistinguishable(a: float, b: float) -> bool:
        gain = Bootstrap(len(prompts), draws=NOISE_DRAWS, seed=seed).mean(rewards(a) - rewards(b))
        return not gain.excludes_zero()

    def degenerate(alpha: float) -> bool:
        candidate, base = evaluated[alpha], evaluated[0.0]
        return candidate.truncated - base.truncated > DEGENERATE or candidate.repetition - base.repetition > DEGENERATE

    finder = Search(grid, budget, indistinguishable=indistinguishable, degenerate=degenerate)
    while (alpha := finder.next()) is not None:
        try:
            evaluated[alpha] = evaluate(alpha, SELECTION)
        except NotGenerated:
            if alpha in grid:
                raise
            return evaluated, f"rescore: α={alpha:g} was never generated"
        finder.record(alpha, float(np.mean(rewards(alpha))))
    return evaluated, finder.stopped or "grid"
