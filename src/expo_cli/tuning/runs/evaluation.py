"""Evaluating one candidate α on one part of the prompts, batch by batch, keeping every batch in the run folder.

A batch already in the run folder is read back instead of generated (and its rewards instead of scored), so a
killed run resumes inside a half-done candidate; the model is loaded, and set to θ(α), only when something is left
to generate. Because each batch is seeded by its number, a batch made again is the batch that would have been made,
by whichever process makes it: a candidate with work left is claimed first (`claims`), so that no two processes
sharing the folder make it at once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..backends.generation import Generator, Response, batches
from ..decision.candidate import CONFIRMATION, SELECTION, Candidate, NotGenerated
from ..objectives.judge import PairwiseJudge
from ..objectives.rewards import BatchScores, Cached
from .runfolder import RunFolder

Policy = tuple[Callable[[float], float], Generator]  # (set θ(α), generate)


@dataclass
class Lazy:
    """The policy, loaded on first use: a run whose folder holds every response never loads a model."""

    load: Callable[[], tuple[Policy, Callable[[], None]]]  # -> (the policy, what closes it)
    _loaded: tuple[Policy, Callable[[], None]] | None = field(default=None, init=False)

    def get(self) -> Policy:
        if self._loaded is None:
            self._loaded = self.load()
        return self._loaded[0]

    def close(self) -> None:
        if self._loaded is not None:
            self._loaded[1]()
            self._loaded = None


@dataclass
class Evaluator:
    """Evaluates (α, part) from the run folder, generating and scoring only what it does not hold."""

    policy: Lazy | None  # None: --rescore
    texts: list[str]
    prompt_ids: list[list[int]]
    parts: dict[str, list[int]]
    batch_size: int
    scorer: Cached
    folder: RunFolder
    progress: bool = True
    _baseline: dict[str, dict[int, list[Response]]] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, alpha: float, part: str) -> Candidate:
        plan = self.plan(part)
        if self.scorer.pairwise and alpha != 0 and len(self.folder.generations(part, 0.0)) < len(plan):
            self(0.0, part)  # a pairwise judge compares with α = 0's answers: made first
        made, scored = self.folder.generations(part, alpha), self.folder.rewards(part, alpha)
        missing = [n for n in range(len(plan)) if n not in made]
        if missing and self.policy is None:
            raise NotGenerated(f"α={alpha:g}: {len(missing)} of {len(plan)} batch(es) never generated ({part})")
        name = claim_name(part, alpha)
        if missing or len(scored) < len(plan):
            self.folder.claims.take(name)  # Busy when another live process is making it
            made, scored = self.folder.generations(part, alpha), self.folder.rewards(part, alpha)  # as of the claim
            missing = [n for n in range(len(plan)) if n not in made]
        try:
            return self._evaluate(alpha, part, plan, made, scored, missing, name)
        finally:
            self.folder.claims.release(name)

    def plan(self, part: str) -> list[list[int]]:
        """The batches of a part's prompts, the same in every process."""
        members = self.parts[part]
        local = batches([self.prompt_ids[m] for m in members], self.batch_size)
        return [[members[i] for i in batch] for batch in local]

    def left(self, alpha: float, part: str) -> int:
        """The batches of (α, part) not yet generated and scored by this evaluator's reward."""
        made, scored = self.folder.generations(part, alpha), self.folder.rewards(part, alpha)
        return sum(1 for n in range(len(self.plan(part))) if n not in made or n not in scored)

    def _evaluate(
        self,
        alpha: float,
        part: str,
        plan: list[list[int]],
        made: dict[int, list[Response]],
        scored: dict[int, BatchScores],
        missing: list[int],
        name: str,
    ) -> Candidate:
        from huggingface_hub.utils import tqdm  # the Hub client loads when the Hub is used

        members = self.parts[part]
        self.scorer.begin((alpha, part))
        # loaded to score too: a reward model placed beside the engine is placed once the engine has its memory
        unscored = len(scored) < len(plan)
        set_alpha, generator = self.policy.get() if (missing or unscored) and self.policy else (None, None)
        update = set_alpha(alpha) if missing and set_alpha else 0.0
        generate_seconds = score_seconds = 0.0
        generated = 0
        responses: list[Response] = []
        rewards: list[float] = []
        unfit: list[bool] = []
        cuts = 0
        label = f"α={alpha:g}" + (" held out" if part == CONFIRMATION else "")
        shown = {"disable": not self.progress, "file": sys.stderr, "dynamic_ncols": True}
        with tqdm(total=len(members), unit="prompt", desc=label, **shown) as bar:
            for number, batch in enumerate(plan):
                if number not in made:
                    started = time.perf_counter()
                    made[number] = generator.batch(number, batch, self.prompt_ids)  # type: ignore[union-attr]
                    generate_seconds += time.perf_counter() - started
                    generated += len(made[number])
                    self.folder.claims.check(name)
                    self.folder.add_generation(part, alpha, number, made[number])
                prompts, texts = [self.texts[r.prompt] for r in made[number]], [r.text for r in made[number]]
                references = self._references(part, number, made[number], alpha) if self.scorer.pairwise else None
                if number in scored:
                    self.scorer.remember(prompts, texts, scored[number], references)
                else:
                    started = time.perf_counter()
                    scored[number] = self.scorer.scored(prompts, texts, references)
                    score_seconds += time.perf_counter() - started
                    self.folder.claims.check(name)
                    self.folder.add_rewards(part, alpha, number, scored[number])
                batch_scores = scored[number]
                responses += made[number]
                rewards += self.scorer.canonical(prompts, texts, references)  # the same answer ties exactly
                unfit += [i in batch_scores.response_cut for i in range(len(made[number]))]
                cuts += len(batch_scores.prompt_cut)
                bar.update(len(batch))
            bar.set_postfix_str(f"mean reward {np.mean(rewards):.4g}")
        return Candidate.ordered(
            alpha,
            part,
            responses,
            rewards,
            unfit,
            update_seconds=update,
            generate_seconds=generate_seconds,
            score_seconds=score_seconds,
            generated=generated,
            prompt_cut=cuts,
        )

    def judge_calls(self, judge: PairwiseJudge, alphas: list[float], samples: int) -> int:
        """The most calls `judge` can still make for `alphas` on the selection prompts (`samples` answers to each):
        none for a scored batch, exactly the orders not in its verdict cache for a batch whose answers (and
        α = 0's) are kept, two per answer for the rest."""
        calls, base = 0, self.folder.generations(SELECTION, 0.0)
        for alpha in alphas:
            scored, made = self.folder.rewards(SELECTION, alpha), self.folder.generations(SELECTION, alpha)
            for number, batch in enumerate(self.plan(SELECTION)):
                if number in scored:
                    continue
                if number not in made or number not in base:
                    calls += 2 * samples * len(batch)
                    continue
                references = self._references(SELECTION, number, made[number], alpha)
                for response, reference in zip(made[number], references, strict=True):
                    if response.text != reference:
                        calls += judge.uncached(self.texts[response.prompt], response.text, reference)
        return calls

    def _references(self, part: str, number: int, responses: list[Response], alpha: float) -> list[str]:
        """α = 0's answers to the same (prompt, sample) as `responses` (batch `number`): a judge's references."""
        if alpha == 0:
            return [r.text for r in responses]
        if number not in self._baseline.get(part, {}):
            self._baseline[part] = self.folder.generations(part, 0.0)
        baseline = {(r.prompt, r.sample): r.text for r in self._baseline[part][number]}
        return [baseline[r.prompt, r.sample] for r in responses]


def claim_name(part: str, alpha: float) -> str:
    """The claim of a candidate on a part of the prompts, named as its files are."""
    return f"{part}/alpha={alpha!r}"
