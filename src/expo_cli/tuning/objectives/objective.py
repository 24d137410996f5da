"""Which objective a tune maximises, as the options name it: a reward model or function scoring responses to
prompts, lm-eval tasks answering their own documents, or a pairwise judge comparing responses with α = 0's. The
combinations that cannot work are refused here, before anything loads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import UsageError

OBJECTIVES = "--reward-model, --reward-fn, --task or --judge"


@dataclass(frozen=True)
class Objective:
    prompts: str | None
    reward_model: str | None
    reward_fn: str | None
    task: str | Sequence[str] | None
    judge: str | None
    judge_url: str | None
    confirm_reward_model: str | None
    confirm_reward_fn: str | None

    @property
    def kind(self) -> str:
        """ "reward", "task" or "judge"."""
        return "task" if self.task is not None else "judge" if self.judge is not None else "reward"

    def check(self) -> None:
        named = [self.reward_model, self.reward_fn, self.task, self.judge]
        if sum(value is not None for value in named) != 1:
            raise UsageError(f"pass one objective: {OBJECTIVES}")
        if (self.judge is None) != (self.judge_url is None):
            raise UsageError("--judge MODEL and --judge-url URL go together (an OpenAI-compatible endpoint)")
        if self.confirm_reward_model is not None and self.confirm_reward_fn is not None:
            raise UsageError("pass at most one of --confirm-reward-model and --confirm-reward-fn")
        if self.task is not None:
            if self.prompts is not None:
                raise UsageError("--task answers its tasks' own documents: --prompts is not used with it")
            if self.confirm_reward_model is not None or self.confirm_reward_fn is not None:
                raise UsageError("--confirm-reward scores responses to prompts; with --task, pass --guard instead")
        elif self.prompts is None:
            raise UsageError("--prompts FILE|ORG/NAME: what the candidates answer (or --task, lm-eval's documents)")
