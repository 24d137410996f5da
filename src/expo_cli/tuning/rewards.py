"""Scoring (prompt, response) pairs: a sequence-classification reward model, as the paper did, or a function.

The reward model scores each conversation `[user: prompt, assistant: response]` rendered with *its own* chat
template, tokenized without adding special tokens again (the template has them; the paper stripped the doubled
BOS by hand), and takes the raw logit of its single label. transformers pools at the last non-pad token, so
left and right padding score alike; batches are sorted by length to cut padding.

A reward function (`module:function` or `path/to/file.py:function`) takes (prompt, response) and returns a
number: verifiable rewards (unit tests, math checkers, rule-based graders).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from ..errors import InputError, UsageError, first_line


class Reward(Protocol):
    name: str

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


class RewardFunction:
    """A Python function (prompt, response) -> float."""

    def __init__(self, spec: str) -> None:
        module, _, function = spec.rpartition(":")
        self.name = f"{Path(module).name}:{function}" if module.endswith(".py") else spec  # no local path
        self.function = load_function(spec)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        scores = []
        for prompt, response in zip(prompts, responses, strict=True):
            try:
                value = self.function(prompt, response)
            except Exception as err:  # the user's code: say whose it is
                raise InputError(f"--reward-fn {self.name} raised {type(err).__name__}: {err}") from err
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"--reward-fn {self.name} returned {value!r}; it must return a finite number")
            scores.append(float(value))
        return scores


def load_function(spec: str) -> Callable[[str, str], float]:
    """`package.module:function` (importable) or `path/to/file.py:function`."""
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"--reward-fn {spec!r}: write it as module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise InputError(f"--reward-fn {spec}: no such file {module_name}")
            loaded = importlib.util.spec_from_file_location(f"expo_reward_{path.stem}", path)
            assert loaded is not None and loaded.loader is not None
            module = importlib.util.module_from_spec(loaded)
            sys.modules[loaded.name] = module
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except InputError:
        raise
    except Exception as err:  # an import error in user code
        raise InputError(f"--reward-fn {spec}: cannot import {module_name} ({type(err).__name__}: {err})") from err
    function = getattr(module, attribute, None)
    if not callable(function):
        raise InputError(f"--reward-fn {spec}: {module_name} has no function {attribute!r}")
    return function


class RewardModel:
    """A sequence-classification model with one label, scoring with its own chat template."""

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        batch_size: int = 8,
        dtype: str | None = None,
        max_length: int = 4096,
        token: str | None = None,
        warn: Callable[[str], None] = print,
    ) -> None:
        import torch  # torch loads on first use, not with the package
        from transformers import (  # transformers loads when a model does
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        self.name = Path(path).resolve().name if Path(path).exists() else path  # a folder name, never its path
        self.batch_size = batch_size
        self.max_length = max_length
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, token=token)
            self.model = (
                AutoModelForSequenceClassification.from_pretrained(
                    path, dtype=getattr(torch, dtype) if dtype else "auto", token=token
                )
                .to(device)
                .eval()
            )
        except Exception as err:  # missing files, wrong architecture, no network
            raise InputError(
                f"--reward-model {path}: cannot load a sequence-classification model ({first_line(err)})"
            ) from err
        if self.model.config.num_labels != 1:
            raise InputError(
                f"--reward-model {path}: has {self.model.config.num_labels} labels; a reward model "
                "has one (its raw logit is the reward)"
            )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if self.model.config.pad_token_id is None:  # pooling finds the last token that is not this one
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.templated = bool(getattr(self.tokenizer, "chat_template", None))
        if not self.templated:
            warn(f"--reward-model {path} has no chat template: scoring the prompt and response joined by a newline")

    def render(self, prompt: str, response: str) -> str:
        if not self.templated:
            return f"{prompt}\n{response}"
        conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(conversation, tokenize=False)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        import torch  # torch loads on first use, not with the package

        texts = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        ids = [
            self.tokenizer(t, add_special_tokens=not self.templated, truncation=True, max_length=self.max_length)[
                "input_ids"
            ]
            for t in texts
        ]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        scores = [0.0] * len(ids)
        device = self.model.device
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            padded = self.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt")
            with torch.no_grad():
                logits = self.model(
                    input_ids=padded["input_ids"].to(device), attention_mask=padded["attention_mask"].to(device)
                ).logits
            for i, value in zip(batch, logits[:, 0].float().tolist(), strict=True):
                scores[i] = value
        return scores
