"""expo merge: extrapolate an aligned checkpoint away from its SFT checkpoint.

Usage:
    expo merge --sft ./zephyr-sft --aligned ./zephyr-dpo --output ./zephyr-expo --alpha 0.5
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

import expo_cli

from ..constants import DEFAULT_MAX_SHARD_SIZE
from ..fsutil import human_bytes
from . import _output as out
from ._options import (
    AdapterStackOpt,
    AlignedIdOpt,
    AlignedOpt,
    AlignedRevisionOpt,
    AllowArchOpt,
    AlphaForOpt,
    AlphaOpt,
    BaseOpt,
    CommitMessageOpt,
    CreatePrOpt,
    DeltaRankOpt,
    DeviceOpt,
    DryRunOpt,
    DtypeOpt,
    ExcludeOpt,
    ForceOpt,
    HubTarget,
    IncludeOpt,
    JsonOpt,
    MaxShardSizeOpt,
    ModelNameOpt,
    PartsOpt,
    PrivateOpt,
    PushToHubOpt,
    QuietOpt,
    RevisionOpt,
    SftIdOpt,
    SftOpt,
    SftRevisionOpt,
    StrictOpt,
    TokenOpt,
    ToStepOpt,
    TrajectoryOpt,
    run_alphas,
    run_options,
)
from .push import upload

if TYPE_CHECKING:
    from ..merging.api import MergeResult

MERGE_EXAMPLES = [
    "expo merge --sft ./zephyr-sft --aligned ./zephyr-dpo --output ./zephyr-expo --alpha 0.5",
    "expo merge --sft ./sft --aligned ./dpo-20pct --output ./expo-f32 --alpha 2.5 --dtype float32",
    "expo merge --sft ./sft --aligned ./dpo --output ./sweep --alpha 0.1,0.3,0.5",
    "expo merge --sft ./sft --aligned ./dpo --output ./out --alpha 0.3 --alpha-for 'embed|lm_head=0'",
    "expo merge --sft ./sft --aligned ./dpo --output ./out --alpha 0.3 --dry-run --json",
    "expo merge --trajectory 0=./sft --trajectory 100=./dpo-step-100 --trajectory 200=./dpo-step-200 "
    "--to-step 1000 --output ./out",
    "expo merge --sft ./sft --aligned ./dpo --output ./out --alpha 0.5 --delta-rank 4",
    "expo merge --sft HuggingFaceH4/mistral-7b-sft-beta --aligned HuggingFaceH4/zephyr-7b-beta --output ./out "
    "--alpha 0.1 --push-to-hub me/zephyr-7b-expo",
]


def merge(
    aligned: AlignedOpt = None,
    alpha: AlphaOpt = None,
    sft: SftOpt = None,
    trajectory: TrajectoryOpt = None,
    to_step: ToStepOpt = None,
    delta_rank: DeltaRankOpt = None,
    base: BaseOpt = None,
    adapter_stack: AdapterStackOpt = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            rich_help_panel="Output",
            metavar="FOLDER",
            help="Folder to write the merged checkpoint into (a sweep: its parent); not with --stream.",
        ),
    ] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = "auto",
    max_shard_size: MaxShardSizeOpt = DEFAULT_MAX_SHARD_SIZE,
    alpha_for: AlphaForOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    strict: StrictOpt = False,
    profile: Annotated[
        bool,
        typer.Option(
            "--profile",
            rich_help_panel="Speed",
            help="Show where the time went: wall and CPU seconds per stage and thread (reading + arithmetic, "
            "waits, write, fsync, hash, finish, rename), and CPU use; also in --json.",
        ),
    ] = False,
    allow_architecture_mismatch: AllowArchOpt = False,
    sft_revision: SftRevisionOpt = None,
    aligned_revision: AlignedRevisionOpt = None,
    sft_id: SftIdOpt = None,
    aligned_id: AlignedIdOpt = None,
    model_name: ModelNameOpt = None,
    copy: Annotated[
        list[str] | None,
        typer.Option(
            "--copy",
            rich_help_panel="Output",
            metavar="GLOB",
            help="Also copy these files of the aligned folder (repeatable); see the side-file policy.",
        ),
    ] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            "--skip",
            rich_help_panel="Output",
            metavar="GLOB",
            help="Do not copy these files of the aligned folder (repeatable).",
        ),
    ] = None,
    mistral_format: Annotated[
        bool,
        typer.Option(
            "--mistral-format",
            rich_help_panel="Output",
            help="Also extrapolate the Mistral-format weights (consolidated*.safetensors) both inputs have.",
        ),
    ] = False,
    part: Annotated[
        str | None,
        typer.Option(
            "--part",
            rich_help_panel="Job arrays",
            metavar="I/N|auto",
            help="Write only part I of N of the output shards (a job array); the last part finishes the "
            "output. auto: from SLURM_ARRAY_TASK_ID/_COUNT or JOB_COMPLETION_INDEX with --parts.",
        ),
    ] = None,
    parts: PartsOpt = None,
    finish: Annotated[
        bool,
        typer.Option(
            "--finish",
            rich_help_panel="Job arrays",
            help="Finish a merge whose --parts N parts have all run (the last part does it "
            "itself unless it was interrupted).",
        ),
    ] = False,
    as_adapter: Annotated[
        bool,
        typer.Option(
            "--as-adapter",
            rich_help_panel="Output",
            help="--aligned is a LoRA adapter: write a PEFT adapter for the same SFT model whose "
            "update is (1+α) times the original (tiny and instant; not for DoRA), instead of a full checkpoint.",
        ),
    ] = False,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            rich_help_panel="Hub",
            help="With --push-to-hub and Hub inputs: read the inputs by range requests and "
            "upload each output shard as it closes; no local copy of either (see --scratch). Every byte read is "
            "checked against the Hub's sha256 before the commit; retries wait at most EXPO_RETRY_BUDGET seconds "
            "in all (default: 600).",
        ),
    ] = False,
    streams: Annotated[
        int,
        typer.Option(
            "--streams",
            rich_help_panel="Speed",
            metavar="N",
            help="Shards written at once, each with its own arithmetic, write and hash threads and buffers; 0: "
            "automatic, one per two cores, at least 2 (1 with --stream or on a GPU). Same bytes whatever N. "
            "(default: automatic)",
            show_default=False,
        ),
    ] = 0,
    connections: Annotated[
        int,
        typer.Option(
            "--connections",
            rich_help_panel="Hub",
            metavar="N",
            help="With --stream: range requests in flight per input, reading ahead while blocks are computed "
            "(at most max(128 MB, 32 MB × N) ahead per input, and twice that in reused buffers, whatever the "
            "model size).",
        ),
    ] = 4,
    scratch: Annotated[
        str | None,
        typer.Option(
            "--scratch",
            rich_help_panel="Hub",
            metavar="DIR",
            help="Where --stream writes each shard before uploading it "
            "(default: the system's temporary folder; created when missing); it holds two shards at most.",
        ),
    ] = None,
    push_to_hub: PushToHubOpt = None,
    private: PrivateOpt = False,
    revision: RevisionOpt = None,
    commit_message: CommitMessageOpt = None,
    create_pr: CreatePrOpt = False,
    token: TokenOpt = None,
    quiet: QuietOpt = False,
    json: JsonOpt = False,
) -> None:
    """Write θ_expo = θ_aligned + α·(θ_aligned − θ_sft) as a new sharded safetensors checkpoint."""
    alphas = run_alphas(alpha, aligned, sft, trajectory, to_step)
    hub = HubTarget.of(push_to_hub, private, revision, commit_message, create_pr, token)
    mode = _mode(alphas, output, stream, part, finish, parts, hub)
    options = run_options(
        quiet or dry_run,
        dtype=dtype,
        device=device,
        max_shard_size=max_shard_size,
        force=force,
        alpha_for=alpha_for,
        include=include,
        exclude=exclude,
        allow_architecture_mismatch=allow_architecture_mismatch,
        strict=strict,
        profile=profile,
        sft_revision=sft_revision,
        aligned_revision=aligned_revision,
        token=token,
        base=base,
        adapter_stack=adapter_stack,
        sft_id=sft_id,
        aligned_id=aligned_id,
        model_name=model_name,
        copy=copy,
        skip=skip,
        mistral_format=mistral_format,
        as_adapter=as_adapter,
        connections=connections,
        streams=streams,
        trajectory=trajectory or (),
        delta_rank=delta_rank,
    )
    if dry_run:
        _dry_run(sft, aligned, output or _scratch_output(scratch, hub), alphas, options, mode, json)
        return
    results, commit_url = _run(
        mode, sft, aligned, output, alphas, options, part=part, parts=parts, scratch=scratch, hub=hub
    )
    if results is None:  # a part whose siblings are still running, or another one finishes
        if json:
            out.result_json({"part": part, "finished": False})
        return
    if hub is not None and mode != "stream":
        commit_url = upload(results[0].output, hub, quiet)
    _report(results, commit_url, hub, streamed=mode == "stream", quiet=quiet, json=json)


def _mode(
    alphas: list[float],
    output: str | None,
    stream: bool,
    part: str | None,
    finish: bool,
    parts: int | None,
    hub: HubTarget | None,
) -> str:
    """Which merge the flags ask for: "stream", "part", "finish", "sweep" or "one"; flags that conflict are refused."""
    if hub is not None and len(alphas) > 1:
        raise typer.BadParameter(
            "takes one α; publish sweep outputs one by one with expo push", param_hint="--push-to-hub"
        )
    if stream and hub is None:
        raise typer.BadParameter(
            "needs --push-to-hub ORG/NAME: the output goes straight to the Hub", param_hint="--stream"
        )
    if stream and (len(alphas) > 1 or part or finish or output):
        raise typer.BadParameter(
            "streams one α to --push-to-hub, with no --output, --part or --finish", param_hint="--stream"
        )
    if not stream and not output:
        raise typer.BadParameter("is required (or --stream with --push-to-hub)", param_hint="--output")
    if (part or finish) and len(alphas) > 1:
        raise typer.BadParameter("a job array merges one α; run one array per α", param_hint="--part")
    if part and finish:
        raise typer.BadParameter("use one of them: parts finish by themselves", param_hint="--part/--finish")
    if finish and not parts:
        raise typer.BadParameter("--finish needs --parts N", param_hint="--finish")
    if stream:
        return "stream"
    if part or finish:
        return "part" if part else "finish"
    return "sweep" if len(alphas) > 1 else "one"


def _scratch_output(scratch: str | None, hub: HubTarget | None) -> str:
    """Where --stream writes the shards on their way to the Hub (what a dry run of it plans)."""
    assert hub is not None  # --stream needs --push-to-hub (checked by _mode)
    return str(Path(scratch or tempfile.gettempdir()) / hub.repo_id.rsplit("/", 1)[-1])


def _dry_run(
    sft: str | None, aligned: str, output: str, alphas: list[float], options: dict[str, Any], mode: str, json: bool
) -> None:
    plan = expo_cli.plan(sft, aligned, output, alphas, **options, stream=mode == "stream")
    if json:
        out.result_json(plan.to_json())
    else:
        for line in plan.describe():
            out.result(line)


def _run(
    mode: str,
    sft: str | None,
    aligned: str,
    output: str | None,
    alphas: list[float],
    options: dict[str, Any],
    *,
    part: str | None,
    parts: int | None,
    scratch: str | None,
    hub: HubTarget | None,
) -> tuple[list[MergeResult] | None, str | None]:
    """The merge `mode` names, through the library API: (its results, or None for an unfinished part; the commit
    URL of a streamed merge)."""
    if mode == "stream":
        assert hub is not None
        result, url = expo_cli.merge_to_hub(
            sft, aligned, hub.repo_id, alphas[0], scratch=scratch, **hub.settings(), **options
        )
        return [result], url
    if mode == "part":
        finished = expo_cli.merge_part(sft, aligned, output, alphas[0], part, parts, **options)
        return ([finished] if finished is not None else None), None
    if mode == "finish":
        return [expo_cli.finish_parts(sft, aligned, output, alphas[0], parts, **options)], None
    if mode == "sweep":
        return expo_cli.sweep(sft, aligned, output, alphas, **options), None
    return [expo_cli.merge(sft, aligned, output, alphas[0], **options)], None


def _report(
    results: list[MergeResult],
    commit_url: str | None,
    hub: HubTarget | None,
    *,
    streamed: bool,
    quiet: bool,
    json: bool,
) -> None:
    """What was merged: a summary on stderr; the output folders (or `--json`) and the commit URL on stdout."""
    if not quiet:
        for line in _summary(results):
            out.info(line)
        if (network := results[0].network) is not None:
            out.info(
                f"Network: {human_bytes(network['read_bytes'])} read in {network['read_seconds']:.1f} s "
                f"({human_bytes(network['read_bytes'] / max(network['read_seconds'], 1e-9))}/s), "
                f"{human_bytes(network['upload_bytes'])} uploaded in {network['upload_seconds']:.1f} s "
                f"({human_bytes(network['upload_bytes'] / max(network['upload_seconds'], 1e-9))}/s)"
                + (
                    f"; {human_bytes(network['verify_read_bytes'])} of the reads checked the inputs' sha256 (their "
                    "tensors were used out of file order)"
                    if network.get("verify_read_bytes")
                    else ""
                )
            )
        if results[0].skipped_files:
            shown = "; ".join(f"{path} ({reason})" for path, reason in results[0].skipped_files.items())
            out.info(f"Not copied from the aligned folder: {shown}. --copy GLOB keeps a file.")
    if results[0].profile:
        for line in _profile_table(results[0].profile):
            out.info(line)
    if json:
        reports = [r.to_json() for r in results]
        if streamed and hub is not None:
            reports[0]["output"] = f"hf://{hub.repo_id}"  # its temporary folder is gone
        if commit_url:
            reports[0]["commit_url"] = commit_url
        out.result_json(reports[0] if len(reports) == 1 else reports)
        return
    for result in results if not streamed else ():
        out.result(str(result.output))
    if commit_url:
        out.result(commit_url)


def _summary(results: list[MergeResult]) -> list[str]:
    """One line per output; a sweep read its inputs once for all of them, which its last line says once."""
    first = results[0]
    if len(results) == 1:
        return [
            f"Merged {first.tensors} tensors ({first.extrapolated} extrapolated) at α={first.alpha:g} on "
            f"{first.device}: {human_bytes(first.bytes_read)} read, {human_bytes(first.bytes_written)} written in "
            f"{len(first.shards)} shard(s), {first.seconds:.1f} s, {human_bytes(first.bytes_per_s)}/s"
        ]
    lines = [
        f"Merged {r.tensors} tensors ({r.extrapolated} extrapolated) at α={r.alpha:g}: "
        f"{human_bytes(r.bytes_written)} written in {len(r.shards)} shard(s)"
        for r in results
    ]
    written = sum(r.bytes_written for r in results)
    lines.append(
        f"Sweep of {len(results)} α on {first.device}: {human_bytes(first.bytes_read)} read once, "
        f"{human_bytes(written)} written, {first.seconds:.1f} s, "
        f"{human_bytes((first.bytes_read + written) / max(first.seconds, 1e-9))}/s"
    )
    return lines


def _profile_table(profile: dict[str, Any]) -> list[str]:
    """--profile on stderr: one line per (thread, stage), then the totals."""
    width = max([len("thread"), *(len(s["thread"]) for s in profile["stages"])]) + 2  # range threads' names vary
    lines = [f"{'thread':<{width}}{'stage':<42}{'wall s':>8}{'CPU s':>8}{'calls':>8}"]
    for s in profile["stages"]:
        lines.append(
            f"{s['thread']:<{width}}{s['stage']:<42}{s['wall_seconds']:>8.2f}{s['cpu_seconds']:>8.2f}{s['calls']:>8}"
        )
    lines.append(
        f"Profile: {profile['wall_seconds']:.2f} s wall, {profile['cpu_seconds']:.2f} s CPU on {profile['cores']} "
        f"core(s): {profile['cpu_utilisation']:.0%} of the machine busy (waits: a thread with nothing to do)"
    )
    return lines
