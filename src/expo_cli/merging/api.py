"""`expo_cli.merge`, `expo_cli.sweep` and `expo_cli.plan`: the library API the CLI is a thin shell over.

Order of work: `planning.prepare` reads and validates both checkpoints' headers, pairs them, resolves α per
tensor, checks the outputs and the free space; only then does `execution.execute` stream every tensor (read
once, extrapolated at each α, written) into temporary folders, add config, card and the aligned model's side
files, fsync, and rename each output into place as the last step.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..alpha import check_alpha, check_alphas
from ..arrays import parse_part
from ..core import profile as profiling
from ..fsutil import scratch_folder
from ..options import MergeOptions
from .execution import MergeResult, execute, execute_to_hub
from .parts import finish_parts as finish_all
from .parts import run_part
from .planning import prepare, sweep_label
from .run import Plan, PreparedRun
from .upload import push
from .weights import WeightSet

__all__ = [
    "MergeOptions",
    "MergeResult",
    "Plan",
    "PreparedRun",
    "WeightSet",
    "finish_parts",
    "merge",
    "merge_part",
    "merge_to_hub",
    "plan",
    "prepare",
    "push",
    "sweep",
]


def merge(sft: str | Path, aligned: str | Path, output: str | Path, alpha: float, **options: Any) -> MergeResult:
    """Write θ_aligned + α·(θ_aligned − θ_sft) as a new checkpoint folder at `output`.

    Args:
        sft, aligned: local checkpoint folders (safetensors or .bin, single file or sharded) or Hub repo ids
            (`org/name`, `org/name@revision`); an existing local folder wins over a repo id.
        output: the folder to create.
        alpha: the paper's α; 0 returns the aligned model, −1 the SFT model.
        **options: the fields of `MergeOptions`.

    Raises:
        ExpoError: a subclass naming what is wrong; the output never exists half-written.
    """
    opts = MergeOptions(**options)
    return _profiled(opts, lambda: execute(_planned(sft, aligned, {check_alpha(alpha): Path(output)}, opts), opts))[0]


def sweep(
    sft: str | Path, aligned: str | Path, output: str | Path, alphas: Sequence[float], **options: Any
) -> list[MergeResult]:
    """One complete checkpoint per α in `output`/alpha-<α>, reading each input tensor once for all of them."""
    opts = MergeOptions(**options)
    return _profiled(opts, lambda: execute(_planned(sft, aligned, _sweep_targets(output, alphas, opts), opts), opts))


def _planned(sft: str | Path, aligned: str | Path, targets: dict[float, Path], opts: MergeOptions) -> PreparedRun:
    with profiling.stage("plan (inputs, headers)"):
        return prepare(sft, aligned, targets, opts)


def _profiled(opts: MergeOptions, work: Callable[[], list[MergeResult]]) -> list[MergeResult]:
    """`work()`, recorded stage by stage when `opts.profile` (each result carries the profile)."""
    if not opts.profile:
        return work()
    recorder = profiling.start()
    try:
        with profiling.stage("import torch"):
            import torch  # noqa: F401  (timed: torch loads on first use)
        results = work()
    finally:
        profiling.stop()
    for result in results:
        result.profile = recorder.to_json()
    return results


def plan(sft: str | Path, aligned: str | Path, output: str | Path, alphas: Sequence[float], **options: Any) -> Plan:
    """Validate everything a merge (one α) or sweep (several) would do and describe it; write nothing."""
    opts = MergeOptions(**options)
    targets = {check_alpha(alphas[0]): Path(output)} if len(alphas) == 1 else _sweep_targets(output, alphas, opts)
    return prepare(sft, aligned, targets, opts, download=False).describe()


def merge_part(
    sft: str | Path,
    aligned: str | Path,
    output: str | Path,
    alpha: float,
    part: str,
    parts: int | None = None,
    **options: Any,
) -> MergeResult | None:
    """Part `I/N` (or `auto`, from Slurm or a Kubernetes Indexed Job) of a merge split over a job array.

    Writes this part's share of the shards beside `output`; the last part to complete finishes the output and
    returns its result (the others return None). See `expo_cli.parts`.
    """
    opts = MergeOptions(**options)
    which = parse_part(part, parts)
    return run_part(prepare(sft, aligned, {check_alpha(alpha): Path(output)}, opts, whole=False), which, opts)


def finish_parts(
    sft: str | Path, aligned: str | Path, output: str | Path, alpha: float, parts: int, **options: Any
) -> MergeResult:
    """Finish a merge whose `parts` parts have all run (what the last part does by itself)."""
    opts = MergeOptions(**options)
    return finish_all(prepare(sft, aligned, {check_alpha(alpha): Path(output)}, opts, whole=False), parts, opts)


def merge_to_hub(
    sft: str | Path,
    aligned: str | Path,
    repo_id: str,
    alpha: float,
    *,
    scratch: str | Path | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    **options: Any,
) -> tuple[MergeResult, str]:
    """Merge Hub inputs straight into a Hub repo with bounded local disk; return (result, commit or PR URL).

    The inputs are read by range requests, never stored; each output shard is written into a temporary folder in
    `scratch` (default: the system's), uploaded as soon as it is complete and deleted, so the local disk holds at
    most two shards (see `--max-shard-size`). `scratch` is created when missing (its parent must exist). One
    commit at the end; an interrupted run commits nothing, and running it again uploads only what the Hub does not
    have yet. See `expo_cli.inputs.ranged` and `expo_cli.merging.upload`.
    """
    opts = MergeOptions(**{**options, "stream": True})
    work = scratch_folder(Path(scratch) if scratch is not None else None)
    urls: list[str] = []

    def streamed() -> list[MergeResult]:
        run = _planned(sft, aligned, {check_alpha(alpha): work / repo_id.rsplit("/", 1)[-1]}, opts)
        result, url = execute_to_hub(
            run, opts, repo_id, private=private, revision=revision, commit_message=commit_message, create_pr=create_pr
        )
        urls.append(url)
        return [result]

    try:
        (result,) = _profiled(opts, streamed)
        return result, urls[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sweep_targets(output: str | Path, alphas: Sequence[float], opts: MergeOptions) -> dict[float, Path]:
    """A sweep's folders: `alpha-<α>`, or for a trajectory `step-<step>`."""
    return {a: Path(output) / sweep_label(a, opts) for a in check_alphas(alphas)}
