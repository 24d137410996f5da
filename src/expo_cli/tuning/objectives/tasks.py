"""lm-evaluation-harness tasks as tune's objective, or as its capability guard.

Each candidate answers the tasks' documents in memory: lm-eval's own `HFLM` is handed expo's loaded model (its
parameters set to θ(α) in place), so a document's score is exactly what `lm_eval.simple_evaluate` gives a checkpoint
merged at that α, without writing one. Documents are the unit the statistics pair: every task's documents in one
list (`documents`), split into selection and held-out parts like prompts, each document scored by its task's first
metric (`log_samples`: one value per document, kept in the run folder). Only metrics whose task aggregates them by
their mean and where higher is better are accepted: the paired statistics compare means.

A task is a name lm-eval knows (its registry) or a task YAML file (a custom task: `dataset_path: json` with local
`data_files` needs no download). Its identity (what a run folder keys its scores by) is the task's configuration, a
digest of its documents and lm-eval's version: edited data or templates score anew.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InputError, UsageError, first_line

OUTPUT_TYPES = ("multiple_choice", "generate_until", "loglikelihood")
INSTALL = "pip install 'expo-cli[tasks]' (lm-eval)"


@dataclass(frozen=True)
class Document:
    task: str
    doc_id: int
    text: str  # what the model is asked (doc_to_text): how the report shows it


@dataclass(frozen=True)
class Answer:
    score: float  # the task's metric on this document
    text: str  # what the model answered: the generation, or the choice it ranked first
    tokens: int  # the generation's length in tokens (0 for log-likelihood tasks)


def import_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as err:
        raise UsageError(f"--task and --guard need lm-evaluation-harness: {INSTALL}") from err
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notes would drown tune's messages
    return lm_eval


def parse_tasks(value: str | Sequence[str], option: str = "--task") -> list[str]:
    """NAME[,NAME...] (or a list of such): task names or task YAML files, each once."""
    items = [value] if isinstance(value, str) else list(value)
    specs = [s.strip() for item in items for s in item.split(",") if s.strip()]
    if not specs:
        raise UsageError(f"{option}: name at least one lm-eval task or task YAML file")
    if len(set(specs)) != len(specs):
        raise UsageError(f"{option} {','.join(specs)}: a task is named twice")
    for spec in specs:
        if spec.endswith((".yaml", ".yml")) and not Path(spec).is_file():
            raise UsageError(f"{option} {Path(spec).name}: no such task file")
    return specs


class TaskSuite:
    """The documents of one or more lm-eval tasks, and how a loaded model answers them."""

    def __init__(self, specs: Sequence[str], option: str = "--task", batch_size: int = 8) -> None:
        import_lm_eval()
        from lm_eval.tasks import TaskManager

        self.option = option
        self.batch_size = batch_size
        files = [s for s in specs if s.endswith((".yaml", ".yml"))]
        # the registry's index takes seconds to build: only when a task is named, not given as a file
        manager = TaskManager(include_defaults=len(files) < len(specs))
        known = set(manager.all_tasks)
        unknown = [s for s in specs if s not in files and s not in known]
        if unknown:
            raise UsageError(f"{option} {unknown[0]}: lm-eval knows no such task (lm-eval ls tasks lists them)")
        try:
            with _quiet():
                loaded = manager.load(list(specs))["tasks"]  # groups opened into their tasks
        except Exception as err:  # a broken YAML, a dataset that cannot load
            raise InputError(f"{option} {','.join(Path(s).name for s in specs)}: lm-eval cannot load it "
                             f"({first_line(err)})") from err  # fmt: skip
        self.manager = manager  # simple_evaluate builds the registry's index again without it
        self.tasks: dict[str, Any] = dict(sorted(loaded.items()))  # documents numbered task by task, by name
        self.metrics = {name: _metric(name, task, option) for name, task in self.tasks.items()}
        self.documents: list[Document] = []
        self._docs: dict[str, list[Any]] = {}
        for name, task in self.tasks.items():
            docs = list(task.eval_docs)
            if not docs:
                raise InputError(f"{option} {name}: the task has no documents")
            self._docs[name] = docs
            self.documents += [Document(name, i, str(task.doc_to_text(doc))) for i, doc in enumerate(docs)]
        self._lm: Any = None
        self._lm_of: Any = None

    @property
    def name(self) -> str:
        return ",".join(f"{name} ({metric})" for name, metric in self.metrics.items())

    def identity(self) -> dict[str, Any]:
        """The tasks' configurations, documents and lm-eval's version: what their scores depend on besides θ."""
        from lm_eval import __version__

        tasks = {}
        for name, task in self.tasks.items():
            config = {k: v for k, v in task.config.to_dict().items() if k != "metadata"}
            tasks[name] = {
                "metric": self.metrics[name],
                "config": _digest(config),
                "documents": _digest(self._docs[name]),
            }
        return {"lm_eval": __version__, "tasks": tasks, "batch_size": self.batch_size}

    def answer(self, model: Any, tokenizer: Any, items: Sequence[int]) -> list[Answer]:
        """The model's answers to `items` (indices into `documents`), each with its score, through lm-eval."""
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        if self._lm_of is not model:  # HFLM reads the model's parameters at each call: one per loaded model
            with _quiet():
                self._lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size)
            self._lm_of = model
        wanted: dict[str, list[int]] = {}
        for i in items:
            document = self.documents[i]
            wanted.setdefault(document.task, []).append(document.doc_id)
        with _quiet():
            results = lm_eval.simple_evaluate(
                model=self._lm,
                tasks=[task for name, task in self.tasks.items() if name in wanted],
                task_manager=self.manager,
                samples=wanted,
                log_samples=True,
                bootstrap_iters=0,
            )
        by_doc = {(task, s["doc_id"]): s for task, samples in (results or {}).get("samples", {}).items()
                  for s in samples}  # fmt: skip
        answers = []
        for i in items:
            document = self.documents[i]
            sample = by_doc.get((document.task, document.doc_id))
            if sample is None:
                raise InputError(f"{self.option} {document.task}: lm-eval returned no score for document "
                                 f"{document.doc_id}")  # fmt: skip
            answers.append(self._answer(document, sample, tokenizer))
        return answers

    def _answer(self, document: Document, sample: dict[str, Any], tokenizer: Any) -> Answer:
        task = self.tasks[document.task]
        score = float(sample[self.metrics[document.task]])
        responses = sample.get("filtered_resps") or []
        if task.OUTPUT_TYPE == "generate_until":
            text = str(responses[0]) if responses else ""
            return Answer(score, text, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        if task.OUTPUT_TYPE == "multiple_choice":
            choices = task.doc_to_choice(self._docs[document.task][document.doc_id])
            values = [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in responses]
            best = max(range(len(values)), key=values.__getitem__) if values else None
            text = f"{choices[best]}" if best is not None and best < len(choices) else ""
            return Answer(score, text, 0)
        return Answer(score, json.dumps(responses, default=str), 0)


def _metric(name: str, task: Any, option: str) -> str:
    """The task's first metric, refused when the statistics cannot use it."""
    from lm_eval.api.metrics import mean

    if task.OUTPUT_TYPE not in OUTPUT_TYPES:
        raise UsageError(
            f"{option} {name}: output_type {task.OUTPUT_TYPE} has no per-document score to compare "
            f"(one of {', '.join(OUTPUT_TYPES)})"
        )
    aggregation = task.aggregation()
    if not aggregation:
        raise UsageError(f"{option} {name}: the task lists no metric")
    metric = next(iter(aggregation))
    if aggregation[metric] is not mean:
        raise UsageError(
            f"{option} {name}: its metric {metric} is not aggregated by a mean, and tune compares per-document means"
        )
    if not task.higher_is_better().get(metric, True):
        raise UsageError(f"{option} {name}: lower {metric} is better, and tune maximises its objective")
    return metric


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _quiet() -> Any:
    """lm-eval's own progress bars and prints, and what its subprocesses say (`git describe` outside a repository):
    tune shows one bar per candidate. Its errors are raised, not printed."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
