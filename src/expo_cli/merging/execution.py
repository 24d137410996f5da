"""Executing a plan: stream the shards into temporary folders beside the outputs, finish each output, publish.

`write_shards` streams every planned shard (or only those named, for a part of a run) of every target through
one `ShardSink` each, reading each input block once for all targets; `finish` adds what is not a shard (index,
config.json with provenance, side files, card); `execute` does both for a whole run and renames each output into
place as the very last step (`output.Staging`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Collection
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..alpha import formula
from ..constants import VERSION
from ..core import profile as profiling
from ..core.sinks import BufferPool, ShardSink
from ..core.streaming import Target, explain_nonfinite, stream
from ..core.writer import write_index
from ..errors import OutputError
from ..fsutil import write_durably
from ..inputs.adapters import ADAPTER_CONFIG
from ..options import MergeOptions
from . import sidefiles
from .card import provenance, write_config, write_model_card
from .run import PreparedRun
from .staging import Staging, remove_partial
from .upload import Uploader, commit, prepare_repo, upload_operations


@dataclass
class MergeResult:
    """What a merge produced; `to_json()` is what `expo merge --json` prints."""

    output: Path
    alpha: float
    formula: str
    device: str
    tensors: int
    extrapolated: int
    bytes_read: int
    bytes_written: int
    shards: list[str]
    seconds: float
    notes: list[str] = field(default_factory=list)
    skipped_files: dict[str, str] = field(default_factory=dict)  # not copied from the aligned folder, and why
    profile: dict[str, Any] | None = None  # --profile: where the time went

    @property
    def bytes_per_s(self) -> float:
        return (self.bytes_read + self.bytes_written) / max(self.seconds, 1e-9)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "output": str(self.output), "gb_per_s": round(self.bytes_per_s / 1e9, 3)}


def execute(run: PreparedRun, opts: MergeOptions) -> list[MergeResult]:
    """Write every output of the run into its temporary folder, finish it, and rename it into place."""
    started = time.perf_counter()
    for leftover in run.leftovers:
        opts.warning(f"removing {leftover}, left by an earlier run that did not finish")
        remove_partial(leftover)
    for alpha in run.targets:
        opts.inform(formula(alpha))
    with ExitStack() as stack:
        stagings = {alpha: stack.enter_context(Staging(output)) for alpha, output in run.targets.items()}
        checksums = write_shards(run, {alpha: staging.path for alpha, staging in stagings.items()}, opts)
        with profiling.stage("finish (index, config, card, side files)"):
            for alpha, staging in stagings.items():
                finish(run, alpha, staging.path, checksums[alpha])
        with profiling.stage("rename into place"):
            for staging in stagings.values():
                staging.commit(opts.force)
    seconds = time.perf_counter() - started
    return [result_of(run, alpha, output, seconds) for alpha, output in run.targets.items()]


def result_of(run: PreparedRun, alpha: float, output: Path, seconds: float) -> MergeResult:
    assert run.side_files is not None, "a run that writes has its inputs on disk"
    return MergeResult(
        output=output.resolve(),
        alpha=alpha,
        formula=formula(alpha),
        device=str(run.device),
        tensors=sum(len(w.pairing.tensors) for w in run.weights),
        extrapolated=sum(w.pairing.extrapolated for w in run.weights),
        bytes_read=sum(w.pairing.bytes_read for w in run.weights),
        bytes_written=sum(w.bytes_written for w in run.weights),
        shards=[s.filename for w in run.weights for s in w.shards],
        seconds=seconds,
        notes=[n for w in run.weights for n in w.pairing.notes],
        skipped_files=run.side_files.listing(),
    )


def execute_to_hub(
    run: PreparedRun,
    opts: MergeOptions,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
) -> tuple[MergeResult, str]:
    """--stream: each shard uploaded as it closes and deleted, then one commit; (result, commit or PR URL)."""
    started = time.perf_counter()
    ((alpha, folder),) = run.targets.items()
    prepare_repo(repo_id, private=private, revision=revision, create_pr=create_pr, token=opts.token)
    opts.inform(formula(alpha))
    folder.mkdir(parents=True)
    uploader = Uploader(repo_id, revision, create_pr, opts.token)
    try:
        checksums = write_shards(run, {alpha: folder}, opts, on_shard_closed=uploader.shard_closed)[alpha]
    finally:
        uploaded = uploader.close()
    finish(run, alpha, folder, checksums, uploaded=True)
    url = commit(
        repo_id,
        uploaded + upload_operations(folder),
        revision=revision,
        create_pr=create_pr,
        token=opts.token,
        message=commit_message or f"Upload {run.model_names[alpha]} made with expo {VERSION} (streamed)",
    )
    return result_of(run, alpha, folder, time.perf_counter() - started), url


def write_shards(
    run: PreparedRun,
    folders: dict[float, Path],
    opts: MergeOptions,
    only: Collection[str] | None = None,
    on_shard_closed: Callable[[Path, str], None] | None = None,
) -> dict[float, dict[str, str]]:
    """Stream the planned shards of every target (or only the files named in `only`) into its folder.

    `on_shard_closed(path, sha256)` is called as each shard is complete and durable (an uploader takes it).
    Returns, per target, file name -> sha256 of every shard written.
    """
    import torch  # torch loads on first use, not with the package

    from ..core.engine import ChunkEngine  # imports torch

    engine = ChunkEngine(run.device)
    checksums: dict[float, dict[str, str]] = {alpha: {} for alpha in folders}
    threads = torch.get_num_threads()
    # The writer and the hasher each keep a core busy: the arithmetic gets the others (measured on 2 cores:
    # one arithmetic thread merged the 6 GB pair ~15% faster than two fighting the hasher for a core).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    torch.set_num_threads(max(1, cores - 2))
    try:
        for weights in run.weights:
            shards = [s for s in weights.shards if only is None or s.filename in only]
            tensors = [t for s in shards for t in s.tensors]
            with weights.sft, weights.aligned:
                pool = BufferPool(shards, pinned=engine.cuda)
                sinks = {alpha: ShardSink(folder, shards, pool, on_shard_closed) for alpha, folder in folders.items()}
                targets = [Target(run.alphas(alpha, weights.pairing), sink) for alpha, sink in sinks.items()]
                try:
                    with profiling.stage("read + compute"):
                        stream(
                            tensors,
                            weights.sft,
                            weights.aligned,
                            targets,
                            engine,
                            opts.progress,
                            lambda t, a, w=weights: explain_nonfinite(
                                t, w.sft, w.aligned, a, strict=opts.strict, warn=opts.warning
                            ),
                        )
                    with profiling.stage("wait: writer finishing"):
                        for alpha, sink in sinks.items():
                            checksums[alpha].update(sink.close())
                except BaseException:
                    for sink in sinks.values():
                        sink.abort()
                    raise
    finally:
        torch.set_num_threads(threads)
    return checksums


def finish(run: PreparedRun, alpha: float, folder: Path, checksums: dict[str, str], uploaded: bool = False) -> None:
    """Everything of one output but its shards: indexes, config.json with provenance, side files, model card.

    The shards must all be in `folder`, complete (parts written elsewhere), unless they were `uploaded` already.
    """
    side = run.side_files
    assert side is not None, "a run that writes has its inputs on disk"
    for weights in run.weights:
        for shard in weights.shards:
            path = folder / shard.filename
            if (
                shard.filename not in checksums
                or not uploaded
                and (not path.is_file() or path.stat().st_size != shard.size)
            ):
                raise OutputError(f"{path}: missing or incomplete ({shard.size} bytes planned); run that part again")
        write_index(folder, weights.shards, weights.index_name)
    record = provenance(
        alpha,
        formula(alpha),
        *run.sources,
        VERSION,
        dtype=run.dtype,
        notes=[n for w in run.weights for n in w.pairing.notes],
        rules=[r.to_json() for r in run.rules],
        shards=checksums,
        shard_sizes={s.filename: s.size for w in run.weights for s in w.shards},
        mistral_format=len(run.weights) > 1,
        side_files={"copied": side.copied, "skipped": side.listing()},
        **({"tuning": run.tuning} if run.tuning else {}),
        **({"output": "peft-adapter"} if run.adapter_config else {}),
    )
    if run.adapter_config is None:
        write_config(run.main.aligned.config, run.main.pairing.dominant_dtype(), record, folder)
    else:  # a PEFT adapter: its config (unchanged unless two adapters were combined); no config.json
        write_durably(folder / ADAPTER_CONFIG, (json.dumps(run.adapter_config, indent=2) + "\n").encode())
    sidefiles.copy_all(side, run.side_folder or run.main.aligned.path, folder)
    adapter = run.adapter_config is not None
    write_model_card(
        folder,
        record,
        run.card,
        (run.main.sft if adapter else run.main.aligned).config,
        run.model_names[alpha],
        adapter=adapter,
    )
