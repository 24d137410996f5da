"""`expo_cli.tune`: choose α as the paper did: generate with each candidate, score, compare with honest statistics.

Order of work, so that every error comes before the long part: options, prompts, the reward function, both
checkpoints (validated as for a merge), the output folder, the reward model, the policy model. Then one model is
loaded once and each candidate α is written into its parameters in place (`candidates.CandidateModel`: bit for bit
what `expo merge` writes), generates a response to every prompt with the same seeds (`generation`), and is scored
(`rewards`). α = 0, the aligned model itself, is always a candidate: every other is judged by its paired
difference from it (`statistics`). The grid can be refined around its best point (`search`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..alpha import check_alphas
from ..core.sources import dtype_name
from ..errors import InputError, UsageError, first_line
from ..inputs.adapters import input_folders
from ..merging.api import PreparedRun, prepare
from ..options import MergeOptions
from .candidates import CandidateModel
from .generation import Decoding, encode_prompts, generate
from .prompts import load_prompts
from .result import Candidate, TuneResult
from .rewards import Reward, RewardFunction, RewardModel
from .search import Search
from .statistics import Bootstrap, compare, per_prompt, recommend

DEFAULT_ALPHAS = (0.1, 0.3, 0.5)  # α = 0 is always added


def candidate_alphas(alphas: Sequence[float]) -> list[float]:
    """The grid with α = 0 (the aligned model, every comparison's baseline) always in it."""
    return [0.0, *(a for a in check_alphas(alphas) if a != 0)]


def tune(
    sft: str | Path,
    aligned: str | Path,
    prompts: str,
    *,
    reward_model: str | None = None,
    reward_fn: str | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    search: bool = False,
    budget: int | None = None,
    decoding: Decoding | None = None,
    prompt_field: str | None = None,
    split: str = "test",
    limit: int | None = None,
    chat_template: bool = True,
    reward_batch_size: int = 8,
    output: str | Path | None = None,
    **options: Any,
) -> TuneResult:
    """Evaluate candidate α by generating and scoring; return the statistics and the recommended α.

    Args:
        sft, aligned: as for `merge` (local folders or Hub repo ids).
        prompts: a .jsonl/.json/.txt/.parquet file or a Hub dataset `org/name` (`split`, `prompt_field`, `limit`).
        reward_model: a sequence-classification model (folder or Hub id); or `reward_fn`: `module:function`.
        alphas: the grid; α = 0 is always added. `search`: refine around the best point, `budget` candidates in all.
        decoding: sampling settings (seeded identically for every candidate).
        output: checked to be writable before the work starts (the caller merges the chosen α into it).
        **options: the fields of `MergeOptions` (dtype, device, alpha_for, revisions, token, progress, ...).
    """
    with _transformers_bars(options.get("progress", True)):
        return _tune(
            sft,
            aligned,
            prompts,
            reward_model=reward_model,
            reward_fn=reward_fn,
            alphas=alphas,
            search=search,
            budget=budget,
            decoding=decoding or Decoding(),
            prompt_field=prompt_field,
            split=split,
            limit=limit,
            chat_template=chat_template,
            reward_batch_size=reward_batch_size,
            output=output,
            **options,
        )


@contextmanager
def _transformers_bars(shown: bool) -> Iterator[None]:
    """--quiet silences transformers' own loading bars too, for the call only."""
    from transformers.utils import logging  # transformers loads when a model does

    if shown:
        yield
        return
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.enable_progress_bar()


def _tune(
    sft: str | Path,
    aligned: str | Path,
    prompts: str,
    *,
    reward_model: str | None,
    reward_fn: str | None,
    alphas: Sequence[float],
    search: bool,
    budget: int | None,
    decoding: Decoding,
    prompt_field: str | None,
    split: str,
    limit: int | None,
    chat_template: bool,
    reward_batch_size: int,
    output: str | Path | None,
    **options: Any,
) -> TuneResult:
    import torch  # torch loads on first use, not with the package

    grid = candidate_alphas(alphas)
    _check_settings(decoding, reward_model, reward_fn, grid, budget, search)
    opts = MergeOptions(**options)
    texts = load_prompts(prompts, prompt_field, split, limit, opts.token)
    scorer: Reward | None = RewardFunction(reward_fn) if reward_fn else None
    run, opts, dominant = _prepare_in_one_dtype(sft, aligned, {0.0: Path(output)} if output is not None else {}, opts)
    device = run.device
    if scorer is None:
        assert reward_model is not None
        scorer = RewardModel(reward_model, str(device), reward_batch_size, token=opts.token, warn=opts.warning)
    # An adapter input: the model is built from its base's folder (every parameter is then written in place);
    # the tokenizer is the adapter's own when it ships one.
    folders = input_folders(run.main.aligned)
    tokenizer_folder = next((f for f in folders if (f / "tokenizer_config.json").is_file()), folders[0])
    model, tokenizer = _load_policy(folders[-1], tokenizer_folder, dominant, device)
    prompt_ids = encode_prompts(tokenizer, texts, chat_template)
    candidate = CandidateModel.attach(model, run)
    evaluated = _search(
        grid,
        budget if search else len(grid),
        partial(
            _evaluate,
            candidate=candidate,
            tokenizer=tokenizer,
            texts=texts,
            prompt_ids=prompt_ids,
            decoding=decoding,
            scorer=scorer,
            opts=opts,
        ),
        len(texts),
        decoding.seed,
    )
    rewards = {a: per_prompt(c.rewards, [r.prompt for r in c.responses], len(texts)) for a, c in evaluated.items()}
    lengths = {
        a: per_prompt([r.tokens for r in c.responses], [r.prompt for r in c.responses], len(texts))
        for a, c in evaluated.items()
    }
    stats = compare(rewards, lengths, seed=decoding.seed)
    notes = list(run.main.pairing.notes)
    del model, candidate
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return TuneResult(texts, evaluated, stats, recommend(stats), decoding, scorer.name, dominant, str(device), notes)


def _check_settings(
    decoding: Decoding,
    reward_model: str | None,
    reward_fn: str | None,
    grid: list[float],
    budget: int | None,
    search: bool,
) -> None:
    """Settings refused before any model loads."""
    decoding.check()
    if (reward_model is None) == (reward_fn is None):
        raise UsageError("pass one of --reward-model or --reward-fn")
    if budget is not None and budget < len(grid):
        raise UsageError(f"--budget {budget}: the grid alone has {len(grid)} candidates (α = 0 included)")
    if budget is not None and not search:
        raise UsageError("--budget needs --search (the grid alone is evaluated otherwise)")


def _prepare_in_one_dtype(
    sft: str | Path, aligned: str | Path, targets: dict[float, Path], opts: MergeOptions
) -> tuple[PreparedRun, MergeOptions, str]:
    """The run, with every candidate computed in the one dtype the model is loaded in (the aligned model's
    dominant dtype unless --dtype says otherwise): (run, the options used, that dtype's name)."""
    run = prepare(sft, aligned, targets, opts)
    dominant = run.main.pairing.dominant_dtype() or "float32"
    if opts.dtype is None and any(
        dtype_name(t.out_dtype) != dominant for t in run.main.pairing.tensors if t.aligned.is_float
    ):
        opts = replace(opts, dtype=dominant)
        run = prepare(sft, aligned, targets, opts)
    return run, opts, dominant


def _search(
    grid: list[float], budget: int, evaluate: Callable[[float], Candidate], prompts: int, seed: int
) -> dict[float, Candidate]:
    """Evaluate the grid, then (budget left) what `Search` asks for next; stop at the noise floor: two α whose
    paired gain interval contains 0."""
    evaluated: dict[float, Candidate] = {}

    def mean_reward(candidate: Candidate) -> np.ndarray:
        return per_prompt(candidate.rewards, [r.prompt for r in candidate.responses], prompts)

    def indistinguishable(a: float, b: float) -> bool:
        gain = Bootstrap(prompts, draws=2000, seed=seed).mean(mean_reward(evaluated[a]) - mean_reward(evaluated[b]))
        return not gain.excludes_zero()

    finder = Search(grid, budget, indistinguishable=indistinguishable)
    while (alpha := finder.next()) is not None:
        evaluated[alpha] = evaluate(alpha)
        finder.record(alpha, float(np.mean(mean_reward(evaluated[alpha]))))
    return evaluated


def _load_policy(weights: Path, side_files: Path, dtype: str, device: Any) -> tuple[Any, Any]:
    """The aligned model (once, for every candidate) and its tokenizer, left-padding for batched generation."""
    import torch  # torch loads on first use, not with the package
    from transformers import AutoModelForCausalLM, AutoTokenizer  # transformers loads when a model does

    try:
        tokenizer = AutoTokenizer.from_pretrained(side_files)
    except Exception as err:  # missing or broken tokenizer files
        raise InputError(f"--aligned {side_files.name}: cannot load its tokenizer ({first_line(err)})") from err
    try:
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=getattr(torch, dtype))
    except Exception as err:  # an architecture transformers cannot build
        raise InputError(
            f"--aligned {weights.name}: transformers cannot load it as a causal LM ({first_line(err)})"
        ) from err
    return model.to(device).eval(), tokenizer


def _evaluate(
    alpha: float,
    *,
    candidate: CandidateModel,
    tokenizer: Any,
    texts: list[str],
    prompt_ids: list[list[int]],
    decoding: Decoding,
    scorer: Reward,
    opts: MergeOptions,
) -> Candidate:
    from huggingface_hub.utils import tqdm  # the Hub client loads when the Hub is used

    update = candidate.set_alpha(alpha, opts)
    with tqdm(
        total=len(texts),
        unit="prompt",
        desc=f"α={alpha:g}",
        disable=not opts.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        started = time.perf_counter()
        responses = generate(candidate.model, tokenizer, prompt_ids, decoding, bar.update)
        generated = time.perf_counter()
        bar.set_postfix_str("scoring")
        rewards = scorer.score([texts[r.prompt] for r in responses], [r.text for r in responses])
        bar.set_postfix_str(f"mean reward {np.mean(rewards):.4g}")
    return Candidate(alpha, responses, rewards, update, generated - started, time.perf_counter() - generated)
