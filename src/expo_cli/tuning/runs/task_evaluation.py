"""Evaluating one candidate α on one part of an lm-eval task suite's documents, batch by batch, each batch kept in
the run folder (its answers as responses, its per-document scores as rewards) so that a killed run resumes inside a
candidate, as `evaluation` does for generated responses. The model is loaded, and set to θ(α), only when something
is left to answer; a candidate with work left is claimed first, so that no two processes sharing the folder make it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends.generation import Response
from ..decision.candidate import CONFIRMATION, Candidate, NotGenerated
from ..objectives.rewards import BatchScores
from ..objectives.tasks import TaskSuite
from .evaluation import claim_name
from .runfolder import RunFolder

DOCUMENTS_PER_BATCH = 1000  # what the run folder keeps at a time: lm-eval pays ~0.5 s a call (its requests)

# (set θ(α) in the model, the model, its tokenizer), loaded on first use
TaskPolicy = Callable[[], tuple[Callable[[float], float], Any, Any]]


@dataclass
class TaskEvaluator:
    """Evaluates (α, part) on a task suite's documents from the run folder, answering only what it does not hold."""

    suite: TaskSuite
    policy: TaskPolicy | None  # None: --rescore (nothing may be answered)
    parts: dict[str, list[int]]
    folder: RunFolder  # scored by the suite's identity
    progress: bool = True
    label: str = ""  # "guard " when the suite guards another objective (its claims are named so too)

    def plan(self, part: str) -> list[list[int]]:
        members = self.parts[part]
        return [members[i : i + DOCUMENTS_PER_BATCH] for i in range(0, len(members), DOCUMENTS_PER_BATCH)]

    def left(self, alpha: float, part: str) -> int:
        """The batches of (α, part) not yet answered and scored."""
        return len(self._missing(alpha, part)[0])

    def __call__(self, alpha: float, part: str) -> Candidate:
        from huggingface_hub.utils import tqdm  # the Hub client loads when the Hub is used

        plan = self.plan(part)
        name = self.label.replace(" ", "/") + claim_name(part, alpha)
        claimed = bool(self.left(alpha, part))
        if claimed and self.policy is None:
            raise NotGenerated(f"{self.label}α={alpha:g}: never evaluated on the {part} documents")
        if claimed:
            self.folder.claims.take(name)  # Busy when another live process is making it
        try:
            missing, made, scored = self._missing(alpha, part)  # as of the claim
            update = seconds = 0.0
            answered = 0
            shown = {"disable": not self.progress, "file": sys.stderr, "dynamic_ncols": True}
            desc = f"{self.label}α={alpha:g}" + (" held out" if part == CONFIRMATION else "")
            with tqdm(total=len(self.parts[part]), unit="doc", desc=desc, **shown) as bar:
                if missing:
                    assert self.policy is not None
                    set_alpha, model, tokenizer = self.policy()
                    update = set_alpha(alpha)
                for number, batch in enumerate(plan):
                    if number in missing:
                        started = time.perf_counter()
                        answers = self.suite.answer(model, tokenizer, batch)
                        seconds += time.perf_counter() - started
                        answered += len(batch)
                        made[number] = [Response(i, 0, a.text, a.tokens) for i, a in zip(batch, answers, strict=True)]
                        scored[number] = BatchScores([a.score for a in answers])
                        self.folder.claims.check(name)
                        self.folder.add_generation(part, alpha, number, made[number])
                        self.folder.add_rewards(part, alpha, number, scored[number])
                    bar.update(len(batch))
                responses = [r for n in range(len(plan)) for r in made[n]]
                rewards = [s for n in range(len(plan)) for s in scored[n].rewards]
                bar.set_postfix_str(f"mean score {np.mean(rewards):.4g}" if rewards else "")
        finally:
            if claimed:
                self.folder.claims.release(name)
        return Candidate.ordered(
            alpha,
            part,
            responses,
            rewards,
            [False] * len(responses),
            update_seconds=update,
            generate_seconds=seconds,
            score_seconds=0.0,
            generated=answered,
        )

    def _missing(self, alpha: float, part: str) -> tuple[list[int], dict[int, list[Response]], dict[int, BatchScores]]:
        """The batches not yet answered and scored, and what the run folder holds: (missing, answers, scores)."""
        made, scored = self.folder.generations(part, alpha), self.folder.rewards(part, alpha)
        return [n for n in range(len(self.plan(part))) if n not in made or n not in scored], made, scored
