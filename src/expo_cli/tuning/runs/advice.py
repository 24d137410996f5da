"""What to do after a tune, as commands to type: try further α, confirm with more prompts, check and publish what
was written. The CLI prints them last; the report shows them under "Next"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..decision.holdout import Split
from ..decision.power import Power, prompts_for
from ..decision.statistics import CandidateStats


class Tuned(Protocol):
    """What the advice reads of a tune's result (`result.TuneResult`)."""

    @property
    def alpha(self) -> float: ...
    @property
    def confirmed(self) -> bool: ...
    @property
    def stats(self) -> Sequence[CandidateStats]: ...

    split: Split
    power: Power | None


UNDER_TRAINED = (1, 2, 5, 10)  # the paper's range for under-trained models starts here


def next_steps(result: Tuned, sft: str | None, aligned: str, output: str | None, refused: str | None) -> list[str]:
    """The next commands after `result`, naming the inputs and the output as given (`refused`: why --output was
    not written, None when it was or none was asked for)."""
    inputs = f"--sft {sft} --aligned {aligned}" if sft else f"--aligned {aligned}"
    grid = sorted(s.alpha for s in result.stats)
    steps = []
    if result.alpha == 0:
        if grid[-1] < UNDER_TRAINED[0]:
            wider = ",".join(f"{a:g}" for a in UNDER_TRAINED)
            steps.append(
                f"No α of the grid beat α = 0; an under-trained aligned model may need α of 1-25: run the same "
                f"expo tune with --alpha {wider}"
            )
        elif result.power is not None:
            needed = prompts_for(result.power.target, result.power.candidates, result.power.fraction)
            steps.append(f"No α beat α = 0: a smaller gain needs more prompts (about {needed} for the target gain)")
        return steps
    if result.alpha == grid[-1]:
        further = ",".join(f"{result.alpha * k:g}" for k in (1, 2, 4))
        steps.append(
            f"α = {result.alpha:g} is the largest tried: run the same expo tune with --alpha {further} (or --search) "
            "to see whether more helps"
        )
    if not result.confirmed and result.power is not None:
        needed = prompts_for(result.power.target, result.power.candidates, result.power.fraction)
        why = "Not confirmed on the held-out prompts" if result.split.confirmation else "Nothing was held out"
        steps.append(
            f"{why}: about {needed} prompts find and confirm a gain of {result.power.target:g} SD of the per-prompt "
            "gain (30% held out by default from 100 prompts on); --force writes it unconfirmed"
        )
    if output and refused is None:
        steps.append(f"Check the output: expo verify {output} {inputs}")
        steps.append(f"Publish it: expo push {output} ORG/NAME")
    elif not output and result.confirmed:
        steps.append(f"Write it: expo merge {inputs} --alpha {result.alpha:g} --output FOLDER")
    return steps
