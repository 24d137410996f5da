"""Scoring (prompt, response) pairs: a sequence-classification reward model, as the paper did, or a function.

The reward model scores each conversation `[user: prompt, assistant: response]` rendered with *its own* chat
template, tokenized without adding special tokens again (the template has them; the paper stripped the doubled
BOS by hand), and takes the raw logit of its single label at the conversation's last token. transformers pools at
the last token that is not the pad id, and a reward model without a pad token is usually given EOS as one: a
template that ends in EOS would then be scored one token early. So each batch is padded on the right with an id
that occurs in none of its conversations, which makes a padded score equal the unpadded one. Batches are sorted
by length to cut padding.

A response is never cut before its end is scored: a conversation longer than the reward model's context (its
tokenizer's or its positions' limit) loses the start of the prompt first. A response too long to fit even with no
prompt loses its own end (the template's closing tokens kept), and is counted and treated like an answer cut at
--max-new-tokens: left out of the sensitivity check, in the cut rates that can refuse --output. Identical (prompt,
response) pairs are scored once (`Cached`): ties between candidates are exact, and scoring is faster.

Scores kept in a run folder are keyed by the reward's identity, which includes the source of this module (the
scoring code) and, for a function, the source of its module and of every module it imports from the user's folder:
an edited grader, or a helper it imports, scores anew.

A reward function (`module:function` or `path/to/file.py:function`) takes (prompt, response) and returns a
number: verifiable rewards (unit tests, math checkers, rule-based graders).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ...errors import ExpoError, InputError, first_line
from ...fsutil import fingerprint
from .usercode import import_root, load_function, local_sources

UNKNOWN_LIMIT = 10**6  # tokenizers without a limit report a huge model_max_length
SCORING_CODE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]  # in every reward's identity
Cut = Literal["prompt", "response"]  # what was shortened to fit the reward model's context
References = Sequence[str] | None  # a pairwise judge's reference answers (α = 0's), one per response


class Reward(Protocol):
    name: str
    cuts: dict[tuple[str, str], Cut]  # (prompt, response) pairs whose input was shortened to fit

    def identity(self) -> dict[str, Any]:
        """Everything its scores depend on: a run folder keeps scores per identity."""
        ...

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


@dataclass
class BatchScores:
    """A batch's rewards and the positions whose prompt (`prompt_cut`) or response (`response_cut`) was shortened
    to fit the reward model."""

    rewards: list[float]
    prompt_cut: set[int] = field(default_factory=set)
    response_cut: set[int] = field(default_factory=set)


class Cached:
    """A reward that scores each distinct (prompt, response) once per candidate, and gives the statistics each pair's
    first value in the run, so that two candidates with the same answer tie exactly. A pairwise judge scores a
    response against a reference (α = 0's answer): its pairs are (prompt, response, reference).

    A reward model's score moves in its last bits with the batch a pair is scored in (padding, batch size): what a
    candidate keeps in the run folder is scored within that candidate alone (`begin`), never depending on which
    candidates the process scored before; the value used (`canonical`) is the first kept for the pair in the
    procedure's order, the same in one process, its workers or a job array's parts. A function scores the same in
    any batch: it is called once per distinct pair in the whole run.
    """

    def __init__(self, reward: Reward) -> None:
        self.reward = reward
        self.name = reward.name
        self.mine: dict[tuple[str, ...], float] = {}  # this candidate's scores (a function's: the run's)
        self.first: dict[tuple[str, ...], float] = {}  # each pair's first value in the run
        self.cuts = reward.cuts
        self.scope: object = None
        self.pairwise = getattr(reward, "pairwise", False)

    def begin(self, scope: object) -> None:
        """Start scoring a candidate (`scope`: its α and part): a reward model scores its pairs anew."""
        if scope != self.scope and isinstance(self.reward, RewardModel):
            self.mine = {}
        self.scope = scope

    def remember(
        self, prompts: Sequence[str], responses: Sequence[str], batch: BatchScores, references: References = None
    ) -> None:
        """Scores made earlier (read back from a run folder)."""
        for i, pair in enumerate(_pairs(prompts, responses, references)):
            self.mine.setdefault(pair, batch.rewards[i])
            self.first.setdefault(pair, batch.rewards[i])
            if i in batch.prompt_cut or i in batch.response_cut:
                self.cuts[pair] = "response" if i in batch.response_cut else "prompt"

    def identity(self) -> dict[str, Any]:
        return self.reward.identity()

    def score(self, prompts: Sequence[str], responses: Sequence[str], references: References = None) -> list[float]:
        """Each pair's score within this candidate: what the run folder keeps."""
        pairs = _pairs(prompts, responses, references)
        new = list(dict.fromkeys(p for p in pairs if p not in self.mine))
        if new:
            columns = [[pair[i] for pair in new] for i in range(len(new[0]))]
            scores = self.reward.score(*columns)
            self.mine.update(zip(new, scores, strict=True))
            for pair, score in zip(new, scores, strict=True):
                self.first.setdefault(pair, score)
        return [self.mine[p] for p in pairs]

    def canonical(
        self, prompts: Sequence[str], responses: Sequence[str], references: References = None
    ) -> list[float]:
        """Each pair's first value in the run (scored or remembered before): what the statistics use."""
        return [self.first[p] for p in _pairs(prompts, responses, references)]

    def scored(self, prompts: Sequence[str], responses: Sequence[str], references: References = None) -> BatchScores:
        """`score`, with which positions were shortened to fit."""
        rewards = self.score(prompts, responses, references)
        kinds = [self.cuts.get(pair) for pair in _pairs(prompts, responses, references)]
        return BatchScores(
            rewards,
            {i for i, kind in enumerate(kinds) if kind == "prompt"},
            {i for i, kind in enumerate(kinds) if kind == "response"},
        )


def _pairs(prompts: Sequence[str], responses: Sequence[str], references: References) -> list[tuple[str, ...]]:
    """(prompt, response) pairs, or (prompt, response, reference) for a pairwise judge."""
    if references is None:
        return list(zip(prompts, responses, strict=True))
    return list(zip(prompts, responses, references, strict=True))


class RewardFunction:
    """A Python function (prompt, response) -> float."""

    def __init__(self, spec: str, option: str = "--reward") -> None:
        self.option = option  # how errors name it: --reward-fn, or --confirm-reward-fn
        self.cuts: dict[tuple[str, str], Cut] = {}  # a function reads any length
        module, _, function = spec.rpartition(":")
        self.name = f"{Path(module).name}:{function}" if module.endswith(".py") else spec  # no local path
        self.function = load_function(spec, option)

    def identity(self) -> dict[str, Any]:
        """Its name, the scoring code, and the source of its module and of the modules it imports from its own
        folder (an edited grader, or an edited helper it imports, scores anew)."""
        try:
            source_file = Path(inspect.getsourcefile(self.function) or "")
            module = sys.modules.get(self.function.__module__)
            sources = local_sources(source_file, import_root(source_file, getattr(module, "__name__", "")))
        except (OSError, TypeError):
            sources = {}
        combined = hashlib.sha256()
        for name in sorted(sources):
            combined.update(name.encode() + b"\0" + hashlib.sha256(sources[name]).digest())
        return {
            "reward_fn": self.name,
            "scoring_code": SCORING_CODE,
            "source_sha256": combined.hexdigest(),
            "modules": sorted(sources),
        }

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        scores = []
        for prompt, response in zip(prompts, responses, strict=True):
            try:
                value = self.function(prompt, response)
            except ExpoError:  # Ctrl-C while the grader ran: an interruption, not the grader's error
                raise
            except Exception as err:  # the user's code: say whose it is
                raise InputError(f"{self.option}-fn {self.name} raised {type(err).__name__}: {err}") from err
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{self.option}-fn {self.name} returned {value!r}; it must return a finite number")
            scores.append(float(value))
        return scores


class RewardModel:
    """A sequence-classification model with one label, scoring with its own chat template."""

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        batch_size: int = 8,
        dtype: str | None = None,
        token: str | None = None,
        warn: Callable[[str], None] = print,
        option: str = "--reward",
    ) -> None:
        import torch  # torch loads on first use, not with the package
        from transformers import (  # transformers loads when a model does
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        self.name = Path(path).resolve().name if Path(path).exists() else path  # a folder name, never its path
        self.path = path
        self.option = option  # how errors name it: --reward-model, or --confirm-reward-model
        self.batch_size = batch_size
        self.cuts: dict[tuple[str, str], Cut] = {}
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
                f"{option}-model {path}: cannot load a sequence-classification model ({first_line(err)})"
            ) from err
        if self.model.config.num_labels != 1:
            raise InputError(
                f"{option}-model {path}: has {self.model.config.num_labels} labels; a reward model "
                "has one (its raw logit is the reward)"
            )
        self.planned: str | None = None  # where `place()` moves it once the policy's engine holds its memory
        self.max_length = context_length(self.tokenizer, self.model.config)
        self.vocabulary = self.model.get_input_embeddings().num_embeddings
        self.templated = bool(getattr(self.tokenizer, "chat_template", None))
        if not self.templated:
            warn(f"{option}-model {path} has no chat template: scoring the prompt and response joined by a newline")

    def nbytes(self) -> int:
        """Its weights' size: what it needs on a device beside activations."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def plan(self, device: str) -> None:
        """Score on `device`, moved there by `place()` (after the policy's engine has taken its memory); the
        identity names it already, so scores are keyed by where they will be made."""
        self.planned = device

    def place(self) -> None:
        if self.planned is not None and self.model.device.type != self.planned:
            self.model.to(self.planned)

    def identity(self) -> dict[str, Any]:
        """The model (its Hub commit, or its local files), dtype, device and context."""
        local = Path(self.path)
        version = fingerprint(local) if local.is_dir() else getattr(self.model.config, "_commit_hash", None)
        return {
            "reward_model": self.name,
            "scoring_code": SCORING_CODE,
            "version": version,
            "dtype": str(self.model.dtype),
            "device": self.planned or self.model.device.type,
            "max_length": self.max_length,
            "batch_size": self.batch_size,  # batch shapes can move the last bits of a score
        }

    def render(self, prompt: str, response: str) -> str:
        if not self.templated:
            return f"{prompt}\n{response}"
        conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(conversation, tokenize=False)

    def overhead(self) -> int:
        """Tokens the template adds around an empty prompt and response."""
        return len(self._ids("", ""))

    def encode(self, prompt: str, response: str) -> tuple[list[int], Cut | None]:
        """The conversation's token ids, and what was shortened to fit the context: the prompt's start first;
        only when the response alone does not fit, the response's end (the template's end kept)."""
        ids = self._ids(prompt, response)
        limit = self.max_length
        if limit is None or len(ids) <= limit:
            return ids, None
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        while len(ids) > limit and prompt_ids:
            prompt_ids = prompt_ids[len(ids) - limit :]  # re-tokenised text may grow: drop the excess again
            ids = self._ids(self.tokenizer.decode(prompt_ids), response)
        if len(ids) <= limit:
            return ids, "prompt"
        response_ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        while len(ids) > limit and response_ids:
            response_ids = response_ids[: len(response_ids) - (len(ids) - limit)]
            ids = self._ids("", self.tokenizer.decode(response_ids))
        return ids[-limit:], "response"  # the template alone too long (refused unless accepted): its end kept

    def _ids(self, prompt: str, response: str) -> list[int]:
        return self.tokenizer(self.render(prompt, response), add_special_tokens=not self.templated)["input_ids"]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        import torch  # torch loads on first use, not with the package

        encoded = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        for pair, (_, cut) in zip(zip(prompts, responses, strict=True), encoded, strict=True):
            if cut is not None:
                self.cuts[pair] = cut
        ids = [i for i, _ in encoded]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        scores = [0.0] * len(ids)
        device = self.model.device
        config = self.model.config.get_text_config()
        for start in range(0, len(order), self.batch_size):
            batch = [ids[i] for i in order[start : start + self.batch_size]]
            pad = unused_id(batch, self.vocabulary)
            width = max(len(row) for row in batch)
            input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in batch], device=device)
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch], device=device)
            config.pad_token_id = pad  # pooling takes the last token that is not this id: the real last one
            with torch.no_grad():
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
            for i, value in zip(order[start : start + self.batch_size], logits[:, 0].float().tolist(), strict=True):
                scores[i] = value
        return scores


def context_length(tokenizer: Any, config: Any) -> int | None:
    """The longest input a model reads: its tokenizer's limit or its position table's, whichever is known and
    smaller."""
    text = config.get_text_config()
    limits = [
        getattr(tokenizer, "model_max_length", None),
        getattr(text, "max_position_embeddings", None),
        getattr(text, "n_positions", None),
    ]
    known = [int(n) for n in limits if isinstance(n, (int, float)) and 0 < n < UNKNOWN_LIMIT]
    return min(known) if known else None


def unused_id(rows: Sequence[Sequence[int]], vocabulary: int) -> int:
    """A token id that occurs in none of `rows` (the largest such id below `vocabulary`)."""
    used = {token for row in rows for token in row}
    return next(i for i in range(vocabulary - 1, -1, -1) if i not in used)
