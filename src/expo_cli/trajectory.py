"""Extrapolating a training trajectory: a least-squares line per weight through k checkpoints, evaluated at a step
(and the check of --delta-rank, the other refinement of the two-point update).

Each weight's values θ_1 … θ_k at steps s_1 < … < s_k get the line a + b·s that fits them best; the output is
that line at `--to-step` T. The line at any step u is a fixed weighted sum of the checkpoints,

    θ(u) = Σ_i w_i(u)·θ_i,   w_i(u) = 1/k + (u − s̄)(s_i − s̄) / Σ_j (s_j − s̄)²,   Σ_i w_i(u) = 1,

so the fit is streamed block by block like ExPO. And it is ExPO between two points of the line: θ(T) =
θ(s_k) + α·(θ(s_k) − θ(s_1)) with α = (T − s_k)/(s_k − s_1). With two checkpoints the line passes through both,
θ(s_i) = θ_i, so two checkpoints at steps 0 and 1 extrapolated to T are exactly ExPO with α = T − 1, byte for byte:
the merge then reads the two checkpoints as `--sft` and `--aligned`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .alpha import check_alpha
from .errors import UsageError


@dataclass(frozen=True)
class Milestone:
    """One checkpoint of a trajectory: the training step it was saved at, and where it is."""

    step: float
    checkpoint: str  # a local folder or a Hub repo id, `org/name@revision` for a branch such as step_10

    def __str__(self) -> str:
        return f"{self.step:g}={self.checkpoint}"


def parse_trajectory(specs: Sequence[str]) -> list[Milestone]:
    """`["0=./sft", "10=org/run@step_10", …]` as milestones, checked: at least two, each STEP=CHECKPOINT with a
    finite step, steps strictly increasing in the order given, no checkpoint listed twice."""
    milestones = []
    for spec in specs:
        step, sep, checkpoint = str(spec).partition("=")
        try:
            value = float(step)
        except ValueError:
            value = math.nan
        if not sep or not checkpoint.strip() or not math.isfinite(value):
            raise UsageError(f"--trajectory {spec!r}: write STEP=CHECKPOINT, e.g. 100=./checkpoint-100")
        milestones.append(Milestone(value, checkpoint.strip()))
    if len(milestones) < 2:
        raise UsageError("--trajectory: give at least two checkpoints (STEP=CHECKPOINT, the option repeated)")
    for before, after in zip(milestones, milestones[1:], strict=False):
        if after.step <= before.step:
            raise UsageError(
                f"--trajectory: steps must increase in the order given ({before} then {after}); list the "
                "checkpoints from the earliest"
            )
    seen: dict[str, Milestone] = {}
    for milestone in milestones:
        key = milestone.checkpoint.rstrip("/")
        if key in seen:
            raise UsageError(
                f"--trajectory: {milestone.checkpoint} is listed twice (steps {seen[key].step:g} and "
                f"{milestone.step:g}); each step needs its own checkpoint"
            )
        seen[key] = milestone
    return milestones


def line_weights(steps: Sequence[float], at: float) -> list[float]:
    """w_i(at): the least-squares line through values at `steps`, evaluated at `at`, as weights of the values."""
    k = len(steps)
    mean = math.fsum(steps) / k
    spread = math.fsum((s - mean) ** 2 for s in steps)
    return [1 / k + (at - mean) * (s - mean) / spread for s in steps]


def alpha_for_step(steps: Sequence[float], to_step: float) -> float:
    """The α of ExPO between the line's values at the first and last steps that gives the line at `to_step`."""
    first, last = steps[0], steps[-1]
    return check_alpha((to_step - last) / (last - first), "--to-step")


def step_for_alpha(steps: Sequence[float], alpha: float) -> float:
    """The step the line reaches at α (the inverse of `alpha_for_step`)."""
    return steps[-1] + alpha * (steps[-1] - steps[0])


def check_delta_rank(rank: int | None) -> None:
    """--delta-rank: a rank of at least 1 (None: the update kept whole)."""
    if rank is not None and rank < 1:
        raise UsageError(f"--delta-rank {rank}: must be at least 1 (the rank each matrix's update is cut to)")


def parse_steps(values: Sequence[str]) -> list[float]:
    """`--to-step` values: comma lists and repeated options, finite and distinct."""
    steps: list[float] = []
    for value in values:
        for part in str(value).split(","):
            try:
                step = float(part.strip())
            except ValueError:
                step = math.nan
            if not math.isfinite(step):
                raise UsageError(f"--to-step: {part.strip()!r} is not a finite number")
            steps.append(step)
    if not steps:
        raise UsageError("--to-step is required with --trajectory")
    if len(set(steps)) != len(steps):
        raise UsageError(f"--to-step: a value is repeated in {', '.join(f'{s:g}' for s in steps)}")
    return steps
