"""The capability guard (`--guard TASK[:MAX_LOSS]`): a candidate may be chosen only when its score on a second
objective (an lm-eval task measuring knowledge or reasoning) is shown to be no worse than α = 0's by more than
MAX_LOSS.

That is a non-inferiority test, paired over the guard's own documents: a candidate is admissible when the upper end
of its loss interval, simultaneous over every candidate (max-T, as the objective's gains), is at most MAX_LOSS. A
candidate whose guard score merely is "not significantly worse" is not admitted: with few documents every interval
is wide, and that weaker rule would admit any loss. The chosen α is then tested once more on the guard's held-out
documents (a Student t interval, one comparison fixed in advance): the choice is confirmed only when both its
objective gain and its guard hold there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import UsageError
from .candidate import Candidate
from .statistics import DRAWS, LEVEL, Bootstrap, Interval, simultaneous, t_interval

DEFAULT_MAX_LOSS = 0.01  # one point of accuracy


@dataclass(frozen=True)
class GuardSpec:
    """What `--guard` names: the task(s), and the largest loss against α = 0 accepted."""

    tasks: str
    max_loss: float

    @classmethod
    def parse(cls, text: str) -> GuardSpec:
        """TASK[,TASK...][:MAX_LOSS]; a task YAML path may hold ':' only before its last one."""
        tasks, sep, loss = text.rpartition(":")
        if not sep or not _number(loss):
            tasks, loss = text, str(DEFAULT_MAX_LOSS)
        value = float(loss)
        if not tasks.strip() or not (math.isfinite(value) and value >= 0):
            raise UsageError(f"--guard {text!r}: TASK[:MAX_LOSS], the loss a non-negative score difference (0.02)")
        return cls(tasks.strip(), value)


@dataclass(frozen=True)
class GuardCheck:
    """One candidate's guard score against α = 0's."""

    alpha: float
    score: float  # mean guard score
    loss: Interval  # α = 0's score minus this one's (positive: a loss), simultaneous on the selection documents
    admissible: bool

    def to_json(self) -> dict[str, Any]:
        interval = [self.loss.estimate, self.loss.low, self.loss.high]
        return {"alpha": self.alpha, "score": self.score, "loss": interval, "admissible": self.admissible}


@dataclass(frozen=True)
class GuardVerdict:
    """The chosen α's guard on the held-out documents."""

    alpha: float
    documents: int
    loss: Interval | None  # None: nothing tested (α = 0 chosen, or no documents held out)
    max_loss: float

    @property
    def held(self) -> bool:
        return self.loss is None or self.loss.high <= self.max_loss

    def note(self, name: str) -> str:
        if self.loss is None:
            return f"guard {name}: nothing to test on held-out documents"
        verdict = "holds" if self.held else "fails"
        return (
            f"guard {name} {verdict} on {self.documents} held-out documents: loss {self.loss} "
            f"{'within' if self.held else 'not shown within'} {self.max_loss:g}"
        )

    def to_json(self) -> dict[str, Any]:
        loss = None if self.loss is None else [self.loss.estimate, self.loss.low, self.loss.high]
        return {"alpha": self.alpha, "documents": self.documents, "loss": loss, "held": self.held}


@dataclass(frozen=True)
class Guard:
    """A guard as the procedure is given it: how to evaluate a candidate on its documents, and its parts."""

    evaluate: Callable[[float, str], Candidate]
    selection: list[int]
    confirmation: list[int]
    max_loss: float
    name: str


def admissible(
    candidates: Mapping[float, Candidate], documents: list[int], max_loss: float, seed: int, draws: int = DRAWS
) -> dict[float, GuardCheck]:
    """Each candidate's guard check on `documents` (α = 0 always admissible)."""
    scores = {a: c.scores(documents).prompt_rewards for a, c in candidates.items()}
    losses = {a: scores[0.0] - s for a, s in scores.items() if a != 0}
    joint = simultaneous(Bootstrap(len(documents), draws, seed), losses)
    checks = {0.0: GuardCheck(0.0, float(np.mean(scores[0.0])), Interval(0.0, 0.0, 0.0), True)}
    for alpha, loss in joint.items():
        checks[alpha] = GuardCheck(alpha, float(np.mean(scores[alpha])), loss, loss.high <= max_loss)
    return dict(sorted(checks.items()))


def held_out(baseline: Candidate, chosen: Candidate, documents: list[int], max_loss: float) -> GuardVerdict:
    """The chosen α's guard on the held-out documents: a Student t interval of the paired loss."""
    loss = baseline.scores(documents).prompt_rewards - chosen.scores(documents).prompt_rewards
    return GuardVerdict(chosen.alpha, len(documents), t_interval(loss, LEVEL), max_loss)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
