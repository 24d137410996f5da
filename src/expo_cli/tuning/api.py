"""`expo_cli.tune`: choose α as the paper did: generate with each candidate, score, compare with honest statistics.

Order of work, so that every error comes before the long part: options, prompts (sampled, then split into a
selection part and a held-out confirmation part: `holdout`), the reward function, both checkpoints (validated as
for a merge), the output folder, the reward model, the policy's tokenizer, the run folder, the policy model. Then
one model is loaded once and each candidate α is written into its parameters in place (`candidates.CandidateModel`:
bit for bit what `expo merge` writes), generates a response to every prompt with the same seeds (`generation`), and
is scored (`rewards`), batch by batch, each batch kept in the run folder as it is made (`runfolder`, `evaluation`).
`procedure` searches and chooses on the selection part and confirms on the held-out part (`statistics`,
`selection`, `search`).

Split over processes (`spread`): job-array parts (`part`) and worker processes (`data_parallel`) evaluate the
grid into one run folder, and the procedure then runs once on what they made (in the part that completes the grid,
or with `finish`): the same result however the work was split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from ..alpha import check_alphas
from ..arrays import parse_part
from ..constants import VERSION
from ..core.sources import dtype_name
from ..errors import InputError, Interrupted, OutputError, UsageError, first_line
from ..fsutil import fingerprint
from ..inputs.adapters import input_folders
from ..merging.api import PreparedRun, prepare
from ..options import MergeOptions
from .backends.candidates import CandidateModel
from .backends.generation import Decoding, Generator, encode_prompts
from .backends.serving import VllmPolicy, import_vllm, reward_placement, vllm_version
from .decision.candidate import SELECTION, NotGenerated
from .decision.guard import Guard, GuardSpec
from .decision.holdout import Split
from .decision.holdout import split as split_prompts
from .decision.looks import Ledger
from .decision.power import TARGET, Power
from .decision.procedure import choose
from .decision.search import DEFAULT_EXTRA
from .decision.selection import DEFAULT_MARGIN, Margin
from .objectives.judge import TEMPLATE, PairwiseJudge, VerdictCache
from .objectives.objective import Objective
from .objectives.prompts import load_prompts
from .objectives.rewards import Cached, Reward, RewardFunction, RewardModel
from .objectives.tasks import TaskSuite, parse_tasks
from .runs.claims import STALE, Busy
from .runs.evaluation import Evaluator, Lazy, Policy
from .runs.result import TuneResult
from .runs.runfolder import RunFolder, default_location, digest
from .runs.spread import Spread, enter_worker, evaluate_share, owner, share, worker_environments, workers
from .runs.task_evaluation import TaskEvaluator

DEFAULT_ALPHAS = (0.1, 0.3, 0.5)  # α = 0 is always added
BACKENDS = ("transformers", "vllm")
# Prompts per generation batch (a batch is what the run folder keeps at a time): vLLM schedules within a batch, so
# it needs large ones to run at its speed.
DEFAULT_BATCH_SIZE = {"transformers": 8, "vllm": 256}


def candidate_alphas(alphas: Sequence[float]) -> list[float]:
    """The grid with α = 0 (the aligned model, every comparison's baseline) always in it."""
    return [0.0, *(a for a in check_alphas(alphas) if a != 0)]


def tune(
    sft: str | Path | None,
    aligned: str | Path | None,
    prompts: str | None,
    *,
    reward_model: str | None = None,
    reward_fn: str | None = None,
    confirm_reward_model: str | None = None,
    confirm_reward_fn: str | None = None,
    task: str | Sequence[str] | None = None,
    judge: str | None = None,
    judge_url: str | None = None,
    judge_budget: int | None = None,
    judge_template: str | Path | None = None,
    guard: str | None = None,
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
    part: str | None = None,
    parts: int | None = None,
    finish: bool = False,
    data_parallel: int = 1,
    **options: Any,
) -> TuneResult | None:
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
        task: instead of prompts and a reward, lm-eval tasks (names or task YAML files, `objectives.tasks`): each
            candidate answers their documents in memory, each document scored by its task's metric.
        judge, judge_url, judge_budget, judge_template: instead of a reward, a pairwise judge model behind an
            OpenAI-compatible endpoint compares each answer with α = 0's in both orders (`objectives.judge`), at
            most `judge_budget` calls.
        guard: "TASK[,TASK...][:MAX_LOSS]": choose only among candidates whose score on these lm-eval tasks is
            shown to be no worse than α = 0's by more than MAX_LOSS (`decision.guard`).
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
        part: "I/N" or "auto" (Slurm, `parts` for a Kubernetes Indexed Job): evaluate only this job-array part's
            share of the grid into `run_dir` (on storage every part sees). The part that completes the grid runs
            the procedure and returns the result; the others return None.
        finish: run the procedure on a run folder whose parts have all run (what the last part does by itself).
        data_parallel: evaluate the grid (or the part's share) in this many worker processes, each with its own
            GPUs (`tensor_parallel_size` each) or its share of the CPU cores, then choose in this one.
        **options: the fields of `MergeOptions` (dtype, device, alpha_for, revisions, token, progress, ...).
    """
    arguments = {name: value for name, value in locals().items() if name not in SPREAD}
    spread = Spread(parse_part(part, parts) if part else None, finish, data_parallel)
    return _run({**arguments, **options}, spread)


SPREAD = ("options", "part", "parts", "finish", "data_parallel")  # tune's arguments that say how it is split


def _run(arguments: dict[str, Any], spread: Spread) -> TuneResult | None:
    """`tune`'s work, its arguments in one dict: what a worker process is given again."""
    if spread.data_parallel > 1:  # what this process says, so that its workers do not say it again
        arguments = {**arguments, **{n: _Said(arguments[n]) for n in ("info", "warn") if arguments.get(n)}}
    with _transformers_bars(arguments.get("progress", True)):
        return _tune(**arguments, spread=spread, arguments=arguments)


@dataclass
class _Said:
    """A message callback that remembers what it said."""

    say: Callable[[str], None]
    messages: list[str] = field(default_factory=list)

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        self.say(message)


def _work(arguments: dict[str, Any], index: int, count: int, environment: dict[str, str], part: Any) -> None:
    """One worker process of `--data-parallel`: its part's candidates as they come free, no bars, its messages
    labelled and those its parent said already left out."""
    enter_worker(environment)
    spread = Spread(part, worker=(index, count))
    labelled = {}
    for name in ("info", "warn"):
        said = arguments.get(name)
        if isinstance(said, _Said):
            labelled[name] = partial(_labelled, spread.label(), said.say, frozenset(said.messages))
    _run({**arguments, **labelled, "progress": False}, spread)


def _labelled(label: str, say: Callable[[str], None], said: frozenset[str], message: str) -> None:
    if message not in said:
        say(f"{label}: {message}")


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
    sft: str | Path | None,
    aligned: str | Path | None,
    prompts: str | None,
    *,
    reward_model: str | None,
    reward_fn: str | None,
    confirm_reward_model: str | None,
    confirm_reward_fn: str | None,
    task: str | Sequence[str] | None,
    judge: str | None,
    judge_url: str | None,
    judge_budget: int | None,
    judge_template: str | Path | None,
    guard: str | None,
    alphas: Sequence[float],
    search: bool,
    budget: int | None,
    decoding: Decoding | None,
    prompt_field: str | None,
    split: str,
    limit: int | None,
    holdout: float | None,
    margin: str | Margin,
    target_gain: float,
    chat_template: bool,
    reward_batch_size: int,
    reward_device: str | None,
    allow_cut_responses: bool,
    run_dir: str | Path | None,
    fresh: bool,
    rescore: bool,
    output: str | Path | None,
    backend: str,
    tensor_parallel_size: int,
    gpu_memory_utilization: float | None,
    spread: Spread,
    arguments: dict[str, Any],
    **options: Any,
) -> TuneResult | None:
    import torch  # torch loads on first use, not with the package

    grid = candidate_alphas(alphas)
    decoding, margin = decoding or Decoding(), Margin.parse(margin)
    objective = Objective(prompts, reward_model, reward_fn, task, judge, judge_url, confirm_reward_model,
                          confirm_reward_fn)  # fmt: skip
    _check_settings(decoding, objective, grid, budget, search, target_gain)
    spread.check(fresh, rescore, run_dir)
    budget = (budget or len(grid) + DEFAULT_EXTRA) if search else len(grid)
    opts = MergeOptions(**options)
    _check_backend(backend, tensor_parallel_size, rescore, opts, guarded=bool(task or guard))
    guarding = GuardSpec.parse(guard) if guard is not None else None
    suite = TaskSuite(parse_tasks(task, "--task"), "--task") if task is not None else None
    guard_suite = TaskSuite(parse_tasks(guarding.tasks, "--guard"), "--guard") if guarding else None
    pairwise = (
        PairwiseJudge(judge_url, judge, _template(judge_template), judge_budget)
        if judge is not None and judge_url is not None
        else None
    )
    if suite is not None:
        texts = [document.text for document in suite.documents]
    else:
        assert prompts is not None
        texts = load_prompts(prompts, prompt_field, split, limit, opts.token, seed=decoding.seed)
    parts = split_prompts(len(texts), holdout, decoding.seed, warn=opts.warning)
    confirm_model, confirm_fn = confirm_reward_model, confirm_reward_fn
    if (confirm_model or confirm_fn) and not parts.confirmation:
        raise UsageError("--confirm-reward judges the held-out prompts, and none are held out: pass --holdout")
    guard_parts = None
    if guard_suite is not None:
        guard_parts = split_prompts(
            len(guard_suite.documents),
            parts.fraction,
            decoding.seed,
            warn=lambda message: opts.warning(f"--guard: {message.replace('prompts', 'documents')}"),
        )
    run, opts, dominant = _prepare_in_one_dtype(sft, aligned, {0.0: Path(output)} if output is not None else {}, opts)
    device = run.device
    # each worker's GPUs or cores, refused before anything is made when there are too few
    environments = (
        worker_environments(spread.data_parallel, device.type, tensor_parallel_size)
        if spread.data_parallel > 1
        else []
    )

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

    if suite is not None:
        scorer = None
    elif pairwise is not None:
        scorer = Cached(pairwise)
    else:
        scorer = Cached(reward(reward_model, reward_fn, "--reward"))
    confirmer = Cached(reward(confirm_model, confirm_fn, "--confirm-reward")) if confirm_model or confirm_fn else None
    # An adapter input: the model is built from its base's folder (every parameter is then written in place);
    # the tokenizer is the adapter's own when it ships one.
    folders = input_folders(run.main.aligned)
    tokenizer_folder = next((f for f in folders if (f / "tokenizer_config.json").is_file()), folders[0])
    tokenizer = _load_tokenizer(tokenizer_folder)
    prompt_ids = encode_prompts(tokenizer, texts, chat_template) if suite is None else []
    key = _run_key(run, texts, prompt_ids, parts, decoding, dominant, device.type)
    if suite is not None:  # the answers depend on the tasks, not on prompts and decoding settings
        del key["encoded_prompts"], key["decoding"]
        key["tasks"] = suite.identity()
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
    identity = suite.identity() if suite is not None else scorer.identity()  # type: ignore[union-attr]
    with (
        RunFolder.open(folder_path, key, identity, fresh=fresh, shared=spread.split) as folder,
        _resumable(folder_path),
    ):
        if spread.worker is None:
            opts.inform(folder.describe())
        if pairwise is not None:
            pairwise.cache = VerdictCache(folder_path / "judge")
        if spread.split:
            folder.agree({"alphas": grid, "search": search, "budget": budget,
                          "parts": spread.part.count if spread.part else _folder_parts(folder)})  # fmt: skip

        def load() -> tuple[Policy, Callable[[], None]]:
            if backend == "vllm":
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
                for judge in (scorer, confirmer):
                    if judge is not None and isinstance(judge.reward, RewardModel):
                        judge.reward.place()
                return (partial(engine.set_alpha, warn=opts.warning), engine), engine.close
            model = _load_policy(folders[-1], dominant, device)
            set_alpha = partial(CandidateModel.attach(model, run).set_alpha, opts=opts)
            return (set_alpha, Generator(model, tokenizer, decoding)), lambda: None

        policy = None if rescore else Lazy(load)
        shown = opts.progress and spread.worker is None
        members = {"selection": parts.selection, "confirmation": parts.confirmation}

        def answering(lazy: Lazy | None = policy) -> tuple[Callable[[float], float], Any, Any]:
            assert lazy is not None
            set_alpha, generator = lazy.get()
            return set_alpha, generator.model, tokenizer

        evaluate: Evaluator | TaskEvaluator
        if suite is not None:
            evaluate = TaskEvaluator(suite, answering if policy else None, members, folder, shown)
        else:
            assert scorer is not None
            evaluate = Evaluator(policy, texts, prompt_ids, members, decoding.batch_size, scorer, folder, shown)
        if pairwise is not None and isinstance(evaluate, Evaluator):
            _check_judge_budget(pairwise, evaluate, grid, budget, decoding.samples_per_prompt, opts)
        confirm = None
        if confirmer is not None:
            assert isinstance(evaluate, Evaluator)
            confirm = replace(evaluate, scorer=confirmer, folder=folder.scored_by(confirmer.identity()))
        guarded = None
        if guard_suite is not None and guarding is not None and guard_parts is not None:
            guard_members = {"selection": guard_parts.selection, "confirmation": guard_parts.confirmation}
            guard_evaluate = TaskEvaluator(
                guard_suite,
                answering if policy else None,
                guard_members,
                folder.guarded_by(guard_suite.identity()),
                shown,
                label="guard ",
            )
            guarded = Guard(guard_evaluate, guard_parts.selection, guard_parts.confirmation, guarding.max_loss,
                            guard_suite.name)  # fmt: skip
        try:
            if spread.split and not _spread_work(spread, evaluate, grid, folder, environments, arguments, opts):
                return None
            try:
                outcome = choose(
                    evaluate, grid, budget, parts, decoding.seed, margin=margin, ledger=_ledger(folder),
                    confirm=confirm, guard=guarded,
                )  # fmt: skip
            except NotGenerated as err:
                raise UsageError(f"--rescore: {err}; run without --rescore to generate them") from err
            except Busy as busy:
                raise UsageError(
                    f"--run-dir {folder_path.name}: {busy}: wait for it to end (a process that died on another host "
                    f"is taken over {STALE:.0f} s after its last heartbeat)"
                ) from busy
        finally:
            if policy is not None:
                policy.close()
        notes = list(run.main.pairing.notes)
        del policy, evaluate
        if device.type == "cuda":
            torch.cuda.empty_cache()
        inputs = {role: source.to_json() for role, source in zip(("sft", "aligned"), run.sources, strict=True)}
        result = TuneResult(
            texts,
            parts,
            outcome,
            decoding,
            suite.name if suite is not None else scorer.name,  # type: ignore[union-attr]
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
            objective.kind,
            pairwise,
        )
        result.save_result()
        if spread.split:
            folder.mark_finished()
        return result


def _ledger(folder: RunFolder) -> Ledger:
    """The held-out prompts' looks, read when the procedure runs (not when a part starts)."""
    return Ledger(folder.looks(), folder.add_look)


def _spread_work(
    spread: Spread,
    evaluate: Evaluator,
    grid: list[float],
    folder: RunFolder,
    environments: list[dict[str, str]],
    arguments: dict[str, Any],
    opts: MergeOptions,
) -> bool:
    """This process's share of a split tune: a worker's or a part's candidates, or the workers it starts. Whether
    this process goes on to choose: a worker never; a part when the grid is complete and it takes the finishing
    claim; --finish when the grid is complete (else an error naming what is missing)."""
    label, mine = spread.label(), share(grid, spread.part)
    if spread.worker is not None:
        evaluate_share(evaluate, mine, wait=False, inform=opts.inform, label="")
        return False
    if spread.data_parallel > 1:
        count = spread.data_parallel
        opts.inform(f"{label}: {len(mine)} candidate(s) on {count} workers, this process and {count - 1} more")
        with workers(partial(_work, part=spread.part), _picklable(arguments), count, environments):
            evaluate_share(evaluate, mine, wait=False, inform=opts.inform, label=f"worker 1/{count}")
    if not spread.finish:  # what is left: a part waits for its share's candidates that other processes are making
        todo = [a for a in mine if evaluate.left(a, SELECTION)] if spread.data_parallel > 1 else mine
        evaluate_share(evaluate, todo, wait=spread.part is not None, inform=opts.inform, label=label)
    left = [alpha for alpha in grid if evaluate.left(alpha, SELECTION)]
    if spread.finish and left:
        count = _folder_parts(folder)
        missing = ", ".join(f"α={a:g}" + (f" (part {owner(grid, a, count)}/{count})" if count else "") for a in left)
        raise OutputError(
            f"--finish: the run is not complete: {missing} not evaluated yet; run the missing part(s) first "
            f"(expo tune --status {folder.path.name} shows who is doing what)"
        )
    if spread.part is None or spread.finish:
        return True
    if left:
        opts.inform(f"Part {spread.part}: done; {len(left)} candidate(s) left to the other parts")
        return False
    if folder.finished():
        opts.inform(f"Part {spread.part}: done; the run was finished already")
        return False
    try:
        folder.claims.take("finish")
    except Busy:
        opts.inform(f"Part {spread.part}: done; another part is finishing the run")
        return False
    opts.inform(f"Part {spread.part}: every candidate is in; choosing")
    return True


def _picklable(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments a worker process can be given: a message callback that cannot be sent (a lambda) is left to
    the default (stderr)."""
    import pickle

    def sendable(value: Any) -> Any:
        try:
            pickle.dumps(value)
        except Exception:  # noqa: BLE001 - pickling fails in many ways
            return None
        return value

    return {k: sendable(v) if k in ("info", "warn") else v for k, v in arguments.items()}


def _folder_parts(folder: RunFolder) -> int | None:
    """The number of parts a split run folder was planned for (None: not an array)."""
    plan = folder.plan()
    return plan.get("parts") if plan else None


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
    if run.checkpoint_folders is not None:  # --trajectory: every checkpoint's files, at its step
        steps = [m.step for m in run.milestones or ()]
        inputs["trajectory"] = [
            {"step": step, "files": fingerprint(folder)}
            for step, folder in zip(steps, run.checkpoint_folders, strict=True)
        ]
    if run.low_rank is not None:
        inputs["delta_rank"] = run.low_rank.rank
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
    objective: Objective,
    grid: list[float],
    budget: int | None,
    search: bool,
    target_gain: float,
) -> None:
    """Settings refused before any model loads."""
    decoding.check()
    if not 0 < target_gain < 10:
        raise UsageError(f"--target-gain {target_gain:g}: a gain in SDs of the per-prompt gain, such as 0.3")
    objective.check()
    if budget is not None and budget < len(grid):
        raise UsageError(f"--budget {budget}: the grid alone has {len(grid)} candidates (α = 0 included)")
    if budget is not None and not search:
        raise UsageError("--budget needs --search (the grid alone is evaluated otherwise)")


def _check_backend(
    backend: str, tensor_parallel_size: int, rescore: bool, opts: MergeOptions, guarded: bool = False
) -> None:
    """The generation backend, refused before any model loads (vLLM missing included); `guarded`: lm-eval tasks
    are evaluated (--task, --guard)."""
    if backend == "vllm" and (opts.trajectory or opts.delta_rank is not None):
        raise UsageError(
            "--trajectory and --delta-rank need --backend transformers (vLLM reads the checkpoints' files)"
        )
    if backend == "vllm" and guarded:
        raise UsageError("--task and --guard need --backend transformers (lm-eval runs on the loaded model)")
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if tensor_parallel_size < 1:
        raise UsageError(f"--tensor-parallel-size {tensor_parallel_size}: must be at least 1")
    if tensor_parallel_size > 1 and backend != "vllm":
        raise UsageError("--tensor-parallel-size needs --backend vllm")
    if backend == "vllm" and not rescore:
        import_vllm()


def _template(path: str | Path | None) -> str:
    """--judge-template: a text file with {instruction}, {output_1} and {output_2} (the default: `judge.TEMPLATE`)."""
    if path is None:
        return TEMPLATE
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--judge-template {Path(path).name}: cannot read it ({first_line(err)})") from err


def _check_judge_budget(
    judge: PairwiseJudge, evaluate: Evaluator, grid: list[float], budget: int, samples: int, opts: MergeOptions
) -> None:
    """Before any answer is made: the most calls this run can still make (the grid's, counted from what the run
    folder keeps, then two per answer for the candidates a search may add and for the held-out pair), refused when
    --judge-budget is lower."""
    extra = len(evaluate.parts["selection"]) * (budget - len(grid)) + len(evaluate.parts["confirmation"])
    most = evaluate.judge_calls(judge, grid[1:], samples) + 2 * samples * extra
    opts.inform(f"{judge.name}: at most {most} call(s) (both orders of each answer unlike α = 0's)")
    if judge.budget is not None and most > judge.budget:
        raise UsageError(
            f"--judge-budget {judge.budget}: this run may need {most} judge calls (verdicts kept from earlier runs "
            "are not counted); raise the budget, or use fewer prompts (--limit) or candidates"
        )


def _prepare_in_one_dtype(
    sft: str | Path | None, aligned: str | Path | None, targets: dict[float, Path], opts: MergeOptions
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
