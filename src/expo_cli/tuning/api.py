"""`expo_cli.tune`: choose α as the paper did: generate with each candidate, score, compare with honest statistics.

Order of work, so that every error comes before the long part: options, prompts (sampled, then split into a
selection part and a held-out confirmation part: `holdout`), the reward function, both checkpoints (validated as
for a merge), the output folder, the reward model, the policy's tokenizer, the run folder, the policy model. Then
one model is loaded once and each candidate α is written into its parameters in place (`candidates.CandidateModel`:
bit for bit what `expo merge` writes), generates a response to every prompt with the same seeds (`generation`), and
is scored (`rewards`), batch by batch, each batch kept in the run folder as it is made (`runfolder`, `evaluation`).
`procedure` searches and chooses on the selection part and confirms on the held-out part (`statistics`,
`selection`, `search`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from ..alpha import check_alphas
from ..constants import VERSION
from ..core.sources import dtype_name
from ..errors import InputError, Interrupted, UsageError, first_line
from ..fsutil import fingerprint
from ..inputs.adapters import input_folders
from ..merging.api import PreparedRun, prepare
from ..options import MergeOptions
from .backends.candidates import CandidateModel
from .backends.generation import Decoding, Generator, encode_prompts
from .backends.serving import VllmPolicy, import_vllm, reward_placement, vllm_version
from .decision.candidate import NotGenerated
from .decision.holdout import Split, split
from .decision.looks import Ledger
from .decision.power import TARGET, Power
from .decision.procedure import choose
from .decision.search import DEFAULT_EXTRA
from .decision.selection import DEFAULT_MARGIN, Margin
from .objectives.prompts import load_prompts
from .objectives.rewards import Cached, Reward, RewardFunction, RewardModel
from .runs.evaluation import Evaluator
from .runs.result import TuneResult
from .runs.runfolder import RunFolder, default_location, digest

DEFAULT_ALPHAS = (0.1, 0.3, 0.5)  # α = 0 is always added
BACKENDS = ("transformers", "vllm")
# Prompts per generation batch (a batch is what the run folder keeps at a time): vLLM schedules within a batch, so
# it needs large ones to run at its speed.
DEFAULT_BATCH_SIZE = {"transformers": 8, "vllm": 256}


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
    confirm_reward_model: str | None = None,
    confirm_reward_fn: str | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    search: bool = False,
    budget: int | None = None,
    decoding: Decoding | None = None,
    prompt_field: str | None = None,
    split: str = "test",
    limit: int | None = None,
    holdout: float | None = None,
    margin: str | Margin = DEFAULT_MARGIN,
    target_gain: float = TARGET,
    chat_template: bool = True,
    reward_batch_size: int = 8,
    reward_device: str | None = None,
    allow_cut_responses: bool = False,
    run_dir: str | Path | None = None,
    fresh: bool = False,
    rescore: bool = False,
    output: str | Path | None = None,
    backend: str = "transformers",
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float | None = None,
    **options: Any,
) -> TuneResult:
    """Evaluate candidate α by generating and scoring; return the statistics, the recommended α and its
    confirmation on held-out prompts.

    Args:
        sft, aligned: as for `merge` (local folders or Hub repo ids).
        prompts: a .jsonl/.json/.txt/.parquet file or a Hub dataset `org/name` (`split`, `prompt_field`, `limit`: a
            seeded random sample of that many).
        reward_model: a sequence-classification model (folder or Hub id), on `reward_device` (default: the
            policy's); or `reward_fn`: `module:function`.
        confirm_reward_model, confirm_reward_fn: a second reward that judges the held-out confirmation (the
            selection reward's held-out gain is reported beside it), so that over-optimising one reward shows.
        alphas: the grid; α = 0 is always added. `search`: refine around the best point, `budget` candidates in all
            (default: the grid and 4 more).
        decoding: sampling settings (seeded identically for every candidate; the paper's by default).
        holdout: the share of prompts held out to confirm the choice (None: 0.3 from 100 prompts on, else 0).
        margin: how much below the best gain a smaller α may be and still be chosen: "20%" (a share of the best
            gain, the default) or a reward difference such as "0.05" (`selection.Margin`).
        target_gain: the gain, in SDs of the per-prompt gain, whose prompt count the power advice states.
        allow_cut_responses: score anyway when --max-new-tokens and the template do not fit the reward model's
            context (responses that do not fit then lose their end, counted as cut).
        run_dir: where responses and rewards are kept as they are made, and resumed from (default: a folder in the
            cache named by the settings); `fresh` empties it first; `rescore` generates nothing, judging the kept
            responses with this reward.
        output: checked to be writable before the work starts (the caller merges the chosen α into it).
        backend: "transformers" (`generate`, one model whose parameters are set in place) or "vllm" (one engine
            whose weights are reloaded in place: `serving`), with `tensor_parallel_size` GPUs and at most
            `gpu_memory_utilization` of each (vLLM's default when None).
        **options: the fields of `MergeOptions` (dtype, device, alpha_for, revisions, token, progress, ...).
    """
    with _transformers_bars(options.get("progress", True)):
        return _tune(
            sft,
            aligned,
            prompts,
            reward_model=reward_model,
            reward_fn=reward_fn,
            confirm_reward=(confirm_reward_model, confirm_reward_fn),
            alphas=alphas,
            search=search,
            budget=budget,
            decoding=decoding or Decoding(),
            prompt_field=prompt_field,
            split_name=split,
            limit=limit,
            holdout=holdout,
            margin=Margin.parse(margin),
            target_gain=target_gain,
            chat_template=chat_template,
            reward_batch_size=reward_batch_size,
            reward_device=reward_device,
            allow_cut_responses=allow_cut_responses,
            run_dir=run_dir,
            fresh=fresh,
            rescore=rescore,
            output=output,
            serving=(backend, tensor_parallel_size, gpu_memory_utilization),
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
    confirm_reward: tuple[str | None, str | None],
    alphas: Sequence[float],
    search: bool,
    budget: int | None,
    decoding: Decoding,
    prompt_field: str | None,
    split_name: str,
    limit: int | None,
    holdout: float | None,
    margin: Margin,
    target_gain: float,
    chat_template: bool,
    reward_batch_size: int,
    reward_device: str | None,
    allow_cut_responses: bool,
    run_dir: str | Path | None,
    fresh: bool,
    rescore: bool,
    output: str | Path | None,
    serving: tuple[str, int, float | None],
    **options: Any,
) -> TuneResult:
    import torch  # torch loads on first use, not with the package

    grid = candidate_alphas(alphas)
    _check_settings(decoding, reward_model, reward_fn, grid, budget, search, target_gain)
    backend, tensor_parallel_size, gpu_memory_utilization = serving
    _check_backend(backend, tensor_parallel_size, rescore)
    budget = (budget or len(grid) + DEFAULT_EXTRA) if search else len(grid)
    opts = MergeOptions(**options)
    texts = load_prompts(prompts, prompt_field, split_name, limit, opts.token, seed=decoding.seed)
    parts = split(len(texts), holdout, decoding.seed, warn=opts.warning)
    confirm_model, confirm_fn = confirm_reward
    if confirm_model is not None and confirm_fn is not None:
        raise UsageError("pass at most one of --confirm-reward-model and --confirm-reward-fn")
    if (confirm_model or confirm_fn) and not parts.confirmation:
        raise UsageError("--confirm-reward judges the held-out prompts, and none are held out: pass --holdout")
    run, opts, dominant = _prepare_in_one_dtype(sft, aligned, {0.0: Path(output)} if output is not None else {}, opts)
    device = run.device

    def reward(model: str | None, fn: str | None, option: str) -> Reward:
        if fn is not None:
            return RewardFunction(fn, option)
        assert model is not None
        beside_engine = backend == "vllm" and not rescore and reward_device is None and device.type == "cuda"
        rm = RewardModel(
            model,
            "cpu" if beside_engine else reward_device or str(device),
            reward_batch_size,
            token=opts.token,
            warn=opts.warning,
            option=option,
        )
        if beside_engine:  # loaded after the engine, where it fits
            placed, why = reward_placement(rm.nbytes(), torch.cuda.get_device_properties(device).total_memory,
                                           gpu_memory_utilization)  # fmt: skip
            rm.plan(placed)
            opts.inform(f"{option}-model {rm.name}: scoring {why}")
        _check_context(rm, texts, decoding, opts, allow_cut_responses)
        return rm

    scorer = Cached(reward(reward_model, reward_fn, "--reward"))
    confirmer = Cached(reward(confirm_model, confirm_fn, "--confirm-reward")) if confirm_model or confirm_fn else None
    # An adapter input: the model is built from its base's folder (every parameter is then written in place);
    # the tokenizer is the adapter's own when it ships one.
    folders = input_folders(run.main.aligned)
    tokenizer_folder = next((f for f in folders if (f / "tokenizer_config.json").is_file()), folders[0])
    tokenizer = _load_tokenizer(tokenizer_folder)
    prompt_ids = encode_prompts(tokenizer, texts, chat_template)
    key = _run_key(run, texts, prompt_ids, parts, decoding, dominant, device.type)
    if backend != "transformers":  # its responses differ: a folder of another backend's, or version's, is refused
        key["backend"] = {
            "name": backend,
            "version": vllm_version(),
            "tensor_parallel_size": tensor_parallel_size,
            # batch-invariant kernels: on a GPU, the answers then no longer depend on what else is batched
            "batch_invariant": os.environ.get("VLLM_BATCH_INVARIANT", "0") not in ("", "0"),
        }
    folder_path = Path(run_dir) if run_dir is not None else default_location(key)
    power = Power(len(parts.selection), len(parts.confirmation), budget - 1, parts.fraction, target_gain)
    opts.inform(power.advice())
    with RunFolder.open(folder_path, key, scorer.identity(), fresh=fresh) as folder, _resumable(folder_path):
        opts.inform(folder.describe())
        ledger = Ledger(folder.looks(), folder.add_look)
        model = engine = policy = None
        if not rescore and backend == "vllm":
            engine = VllmPolicy.start(
                folders[-1],
                tokenizer_folder,
                tokenizer,
                dominant,
                run,
                decoding,
                prompt_ids,
                tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization,
                strict=opts.strict,
            )
            policy = (partial(engine.set_alpha, warn=opts.warning), engine)
            for judge in (scorer, confirmer):
                if judge is not None and isinstance(judge.reward, RewardModel):
                    judge.reward.place()
        elif not rescore:
            model = _load_policy(folders[-1], dominant, device)
            policy = (
                partial(CandidateModel.attach(model, run).set_alpha, opts=opts),
                Generator(model, tokenizer, decoding),
            )
        evaluate = Evaluator(
            policy,
            texts,
            prompt_ids,
            {"selection": parts.selection, "confirmation": parts.confirmation},
            decoding.batch_size,
            scorer,
            folder,
            opts.progress,
        )
        confirm = None
        if confirmer is not None:
            confirm = replace(evaluate, scorer=confirmer, folder=folder.scored_by(confirmer.identity()))
        try:
            outcome = choose(
                evaluate, grid, budget, parts, decoding.seed, margin=margin, ledger=ledger, confirm=confirm
            )
        except NotGenerated as err:
            raise UsageError(f"--rescore: {err}; run without --rescore to generate them") from err
        finally:
            if engine is not None:
                engine.close()
        notes = list(run.main.pairing.notes)
        del model, engine, policy, evaluate
        if device.type == "cuda":
            torch.cuda.empty_cache()
        inputs = {role: source.to_json() for role, source in zip(("sft", "aligned"), run.sources, strict=True)}
        result = TuneResult(
            texts,
            parts,
            outcome,
            decoding,
            scorer.name,
            dominant,
            str(device),
            folder_path,
            budget,
            inputs,
            notes,
            power,
            confirmer.name if confirmer else None,
            Path(output).name if output is not None else None,
            opts.force,
        )
        result.save_result()
        return result


@contextmanager
def _resumable(folder: Path) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) during a tune says where its work is kept and that the same command resumes it."""
    try:
        yield
    except Interrupted as err:
        raise Interrupted(err.signum, f"the responses so far are kept in {folder}: the same command resumes") from err


def _check_context(
    rm: RewardModel, texts: list[str], decoding: Decoding, opts: MergeOptions, allow_cut_responses: bool
) -> None:
    """Before generating: refuse when a full response cannot fit the reward model's context even with no prompt
    (unless allowed), and say when a long prompt and a full response may not (the prompt's start is then cut)."""
    if rm.max_length is None:
        return
    overhead = rm.overhead()
    if overhead + decoding.max_new_tokens > rm.max_length and not allow_cut_responses:
        raise UsageError(
            f"{rm.option}-model {rm.name} reads at most {rm.max_length} tokens: a response of --max-new-tokens "
            f"{decoding.max_new_tokens} and its template ({overhead}) do not fit, so long answers would lose their "
            f"end before scoring; lower --max-new-tokens to {rm.max_length - overhead} or pass --allow-cut-responses"
        )
    longest = max(len(rm.encode(t, "")[0]) for t in texts)
    if longest + decoding.max_new_tokens > rm.max_length:
        opts.warning(
            f"{rm.option}-model {rm.name} reads at most {rm.max_length} tokens; prompts up to {longest} and responses "
            f"up to {decoding.max_new_tokens} tokens may not fit: such prompts lose their start to score the "
            "response whole (counted in the results)"
        )


def _run_key(
    run: PreparedRun,
    texts: list[str],
    prompt_ids: list[list[int]],
    parts: Split,
    decoding: Decoding,
    dtype: str,
    device: str,
) -> dict[str, Any]:
    """Everything the responses depend on: a run folder holds responses for one key only."""
    inputs = {}
    for role, source, described in zip(("sft", "aligned"), (run.main.sft, run.main.aligned), run.sources, strict=True):
        inputs[role] = {**described.to_json(), "files": [fingerprint(f) for f in input_folders(source)]}
    return {
        "expo": VERSION,
        "inputs": inputs,
        "rules": [r.to_json() for r in run.rules],
        "dtype": dtype,
        "device": device,
        "prompts": digest(texts),
        "encoded_prompts": digest(prompt_ids),
        "split": {"seed": decoding.seed, **parts.to_json()},
        "decoding": decoding.to_json(),
    }


def _check_settings(
    decoding: Decoding,
    reward_model: str | None,
    reward_fn: str | None,
    grid: list[float],
    budget: int | None,
    search: bool,
    target_gain: float,
) -> None:
    """Settings refused before any model loads."""
    decoding.check()
    if not 0 < target_gain < 10:
        raise UsageError(f"--target-gain {target_gain:g}: a gain in SDs of the per-prompt gain, such as 0.3")
    if (reward_model is None) == (reward_fn is None):
        raise UsageError("pass one of --reward-model or --reward-fn")
    if budget is not None and budget < len(grid):
        raise UsageError(f"--budget {budget}: the grid alone has {len(grid)} candidates (α = 0 included)")
    if budget is not None and not search:
        raise UsageError("--budget needs --search (the grid alone is evaluated otherwise)")


def _check_backend(backend: str, tensor_parallel_size: int, rescore: bool) -> None:
    """The generation backend, refused before any model loads (vLLM missing included)."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if tensor_parallel_size < 1:
        raise UsageError(f"--tensor-parallel-size {tensor_parallel_size}: must be at least 1")
    if tensor_parallel_size > 1 and backend != "vllm":
        raise UsageError("--tensor-parallel-size needs --backend vllm")
    if backend == "vllm" and not rescore:
        import_vllm()


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


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer  # transformers loads when a model does

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # missing or broken tokenizer files
        raise InputError(f"--aligned {folder.name}: cannot load its tokenizer ({first_line(err)})") from err


def _load_policy(weights: Path, dtype: str, device: Any) -> Any:
    """The aligned model, loaded once for every candidate."""
    import torch  # torch loads on first use, not with the package
    from transformers import AutoModelForCausalLM  # transformers loads when a model does

    try:
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=getattr(torch, dtype))
    except Exception as err:  # an architecture transformers cannot build
        raise InputError(
            f"--aligned {weights.name}: transformers cannot load it as a causal LM ({first_line(err)})"
        ) from err
    return model.to(device).eval()
