"""Evaluating one candidate α on one part of the prompts, batch by batch, keeping every batch in the run folder.

A batch already in the run folder is read back instead of generated (and its rewards instead of scored), so a
killed run resumes inside a half-done candidate; the model is set to θ(α) only when something is left to generate.
Because each batch is seeded by its number, a batch made again is the batch that would have been made.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..backends.generation import Generator, Response, batches
from ..decision.candidate import CONFIRMATION, Candidate, NotGenerated
from ..objectives.rewards import Cached
from .runfolder import RunFolder


@dataclass
class Evaluator:
    """Evaluates (α, part) from the run folder, generating and scoring only what it does not hold."""

    policy: tuple[Callable[[float], float], Generator] | None  # (set θ(α), generate); None: --rescore
    texts: list[str]
    prompt_ids: list[list[int]]
    parts: dict[str, list[int]]
    batch_size: int
    scorer: Cached
    folder: RunFolder
    progress: bool = True

    def __call__(self, alpha: float, part: str) -> Candidate:
        from huggingface_hub.utils import tqdm  # the Hub client loads when the Hub is used

        members = self.parts[part]
        local = batches([self.prompt_ids[m] for m in members], self.batch_size)
        plan = [[members[i] for i in batch] for batch in local]
        made, scored = self.folder.generations(part, alpha), self.folder.rewards(part, alpha)
        missing = [n for n in range(len(plan)) if n not in made]
        if missing and self.policy is None:
            raise NotGenerated(f"α={alpha:g}: {len(missing)} of {len(plan)} batch(es) never generated ({part})")
        set_alpha, generator = self.policy or (None, None)
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
                    self.folder.add_generation(part, alpha, number, made[number])
                prompts, texts = [self.texts[r.prompt] for r in made[number]], [r.text for r in made[number]]
                if number in scored:
                    self.scorer.remember(prompts, texts, scored[number])
                else:
                    started = time.perf_counter()
                    scored[number] = self.scorer.scored(prompts, texts)
                    score_seconds += time.perf_counter() - started
                    self.folder.add_rewards(part, alpha, number, scored[number])
                batch_scores = scored[number]
                responses += made[number]
                rewards += batch_scores.rewards
                unfit += [i in batch_scores.response_cut for i in range(len(made[number]))]
                cuts += len(batch_scores.prompt_cut)
                bar.update(len(batch))
            bar.set_postfix_str(f"mean reward {np.mean(rewards):.4g}")
        order = sorted(range(len(responses)), key=lambda i: (responses[i].prompt, responses[i].sample))
        return Candidate(
            alpha,
            part,
            [responses[i] for i in order],
            [rewards[i] for i in order],
            update,
            generate_seconds,
            score_seconds,
            generated,
            cuts,
            [unfit[i] for i in order],
        )
