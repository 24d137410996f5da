"""Executing a plan: stream the shards into temporary folders beside the outputs, finish each output, publish.

`write_shards` streams every planned shard (or only those named, for a part of a run) of every target through
one `ShardSink` each, reading each input block once for all targets; `finish` adds what is not a shard (index,
config.json with provenance, side files, card); `execute` does both for a whole run and renames each output into
place as the very last step (`output.Staging`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ..constants import VERSION
from ..core import profile as profiling
from ..core.sinks import BufferPool, ShardSink
from ..core.streaming import Target, explain_nonfinite, progress_bar, stream
from ..core.writer import Aborted, Shard, write_index
from ..errors import OutputError
from ..fsutil import available_cores, human_bytes, write_durably
from ..inputs.adapters import ADAPTER_CONFIG
from ..inputs.ranged import RangedSource
from ..options import MergeOptions
from . import sidefiles
from .card import provenance, write_config, write_model_card
from .run import PreparedRun
from .staging import Staging, remove_partial
from .upload import Uploader, commit, prepare_repo, upload_operations
from .weights import WeightSet

T = TypeVar("T")


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
    network: dict[str, float] | None = None  # --stream: bytes and seconds read and uploaded (see `network_report`)
    trajectory: dict[str, Any] | None = None  # --trajectory: its checkpoints and the step extrapolated to
    delta_rank: dict[str, Any] | None = None  # --delta-rank: the rank, and the update's energy kept per matrix

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
        opts.inform(run.formula(alpha))
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
        formula=run.formula(alpha),
        device=str(run.device),
        tensors=sum(len(w.pairing.tensors) for w in run.weights),
        extrapolated=sum(w.pairing.extrapolated for w in run.weights),
        bytes_read=run.bytes_read,
        bytes_written=sum(w.bytes_written for w in run.weights),
        shards=[s.filename for w in run.weights for s in w.shards],
        seconds=seconds,
        notes=[n for w in run.weights for n in w.pairing.notes],
        skipped_files=run.side_files.listing(),
        **run.refinements(alpha),
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
    with profiling.stage("prepare the repo"):
        prepare_repo(repo_id, private=private, revision=revision, create_pr=create_pr, token=opts.token)
    opts.inform(run.formula(alpha))
    folder.mkdir(parents=True)
    uploader = Uploader(repo_id, revision, create_pr, opts.token)
    try:
        checksums = write_shards(run, {alpha: folder}, opts, uploader=uploader)[alpha]
    finally:
        with profiling.stage("wait: the last upload"):
            uploaded = uploader.close()
    with profiling.stage("verify the inputs' sha256"):
        for weights in run.weights:
            for source in network_sources(weights):
                source.verify()  # every byte computed from matches the Hub's listing, or nothing is committed
    with profiling.stage("finish (index, config, card, side files)"):
        finish(run, alpha, folder, checksums, uploaded=True)
    with profiling.stage("commit"):
        url = commit(
            repo_id,
            uploaded + upload_operations(folder),
            revision=revision,
            create_pr=create_pr,
            token=opts.token,
            message=commit_message or f"Upload {run.model_names[alpha]} made with expo {VERSION} (streamed)",
        )
    result = result_of(run, alpha, folder, time.perf_counter() - started)
    result.network = network_report(run, uploader)
    return result, url


def network_report(run: PreparedRun, uploader: Uploader) -> dict[str, float]:
    """What crossed the network: bytes read and the seconds from the first range request to the last answer,
    bytes uploaded and the seconds the uploads took; their ratios are the link's speed, the merge's waits apart."""
    sources = [s for w in run.weights for s in network_sources(w) if s.reading]
    read = sum(s.bytes_fetched for s in sources)
    seconds = max((s.reading[1] for s in sources), default=0.0) - min((s.reading[0] for s in sources), default=0.0)
    return {
        "read_bytes": read,
        "verify_read_bytes": sum(s.bytes_verified for s in sources),
        "read_seconds": seconds,
        "upload_bytes": uploader.bytes_sent,
        "upload_seconds": uploader.seconds_sending,
    }


def write_shards(
    run: PreparedRun,
    folders: dict[float, Path],
    opts: MergeOptions,
    only: Collection[str] | None = None,
    uploader: Uploader | None = None,
) -> dict[float, dict[str, str]]:
    """Stream the planned shards of every target (or only the files named in `only`) into its folder.

    The shards are split into `run.streams` runs of consecutive shards, written at once, each by its own
    arithmetic, writer and hasher threads and its own buffers: shards are independent files, so no single write or
    SHA-256 stream caps the merge, and every file gets the bytes a single stream would write. A failure anywhere
    stops them all. An `uploader` takes each shard as it is complete and durable (a --stream run plans one stream,
    so the scratch folder holds at most two shards). Returns, per target, file name -> sha256 of every shard
    written.
    """
    import torch  # torch loads on first use, not with the package

    assert uploader is None or run.streams == 1, "an uploader takes one shard at a time"
    checksums: dict[float, dict[str, str]] = {alpha: {} for alpha in folders}
    threads = torch.get_num_threads()
    # The writers and hashers keep cores busy too: the arithmetic of all streams gets the rest (measured on 2
    # cores: one arithmetic thread merged the 6 GB pair ~15% faster than two fighting the hasher for a core).
    torch.set_num_threads(max(1, available_cores() - 2 * run.streams))
    try:
        for weights in run.weights:
            shards = [s for s in weights.shards if only is None or s.filename in only]
            total = sum(t.nbytes for s in shards for t in s.tensors) * len(folders)
            with weights.sft, weights.aligned, progress_bar(total, opts.progress) as bar:
                sinks = Streams()  # a failure in one aborts them all
                status = transfer_status(weights, uploader)
                jobs = [
                    partial(_write_group, run, weights, group, folders, opts, uploader, bar, sinks, status)
                    for group in consecutive_groups(shards, run.streams)
                ]
                for written in all_at_once(jobs):
                    for alpha, sums in written.items():
                        checksums[alpha].update(sums)
    finally:
        torch.set_num_threads(threads)
    return checksums


def _write_group(
    run: PreparedRun,
    weights: WeightSet,
    shards: list[Shard],
    folders: dict[float, Path],
    opts: MergeOptions,
    uploader: Uploader | None,
    bar: Any,
    streams: Streams,
    status: Callable[[], str] | None,
) -> dict[float, dict[str, str]]:
    """One stream: these consecutive shards of every target, read, computed, written and hashed in order."""
    from ..core.engine import ChunkEngine  # imports torch

    engine = ChunkEngine(run.device)
    pool = BufferPool(shards, pinned=engine.cuda)
    closed = uploader.shard_closed if uploader is not None else None
    # shards on their way to the Hub are deleted once uploaded: no need to make them durable
    sinks = {
        alpha: ShardSink(folder, shards, pool, closed, transient=uploader is not None)
        for alpha, folder in folders.items()
    }
    streams.join(list(sinks.values()))
    targets = [Target(run.alphas(alpha, weights.pairing), sink) for alpha, sink in sinks.items()]
    try:
        with profiling.stage("read + compute"):
            stream(
                [t for s in shards for t in s.tensors],
                weights.sft,
                weights.aligned,
                targets,
                engine,
                opts.progress,
                lambda t, a: explain_nonfinite(
                    t, weights.sft, weights.aligned, a, strict=opts.strict, warn=opts.warning
                ),
                bar=bar,
                status=status,
            )
        with profiling.stage("wait: writer finishing"):
            return {alpha: sink.close() for alpha, sink in sinks.items()}
    except BaseException:
        streams.fail()
        raise


class Streams:
    """The sinks of every stream of one merge: a failure in any aborts them all, those of a stream that joins after
    it included (a stream's thread may still be starting when another fails at its first block)."""

    def __init__(self) -> None:
        self.sinks: list[ShardSink] = []
        self.failed = False
        self.lock = threading.Lock()

    def join(self, sinks: list[ShardSink]) -> None:
        with self.lock:
            self.sinks += sinks
            failed = self.failed
        if failed:
            for sink in sinks:
                sink.abort()

    def fail(self) -> None:
        with self.lock:
            self.failed = True
            sinks = list(self.sinks)
        for sink in sinks:
            sink.abort()


def network_sources(weights: WeightSet) -> list[RangedSource]:
    """The inputs of a weight set read over the network (--stream)."""
    return [s for s in (weights.sft, weights.aligned) if isinstance(s, RangedSource)]


def transfer_status(weights: WeightSet, uploader: Uploader | None) -> Callable[[], str] | None:
    """How fast inputs read over the network arrive and shards leave, for the progress bar (None when neither
    happens): a slow link tells from a slow merge."""
    sources = network_sources(weights)
    if not sources and uploader is None:
        return None
    started = time.monotonic()

    def status() -> str:
        shown = []
        if sources:
            seconds = max(time.monotonic() - started, 1e-3)
            shown.append(f"reading {human_bytes(sum(s.bytes_fetched for s in sources) / seconds)}/s")
        if uploader is not None and uploader.seconds_sending:
            shown.append(f"uploading {human_bytes(uploader.bytes_sent / uploader.seconds_sending)}/s")
        return ", ".join(shown)

    return status


def consecutive_groups(shards: list[Shard], count: int) -> list[list[Shard]]:
    """At most `count` runs of consecutive shards of about equal bytes (each at least one shard)."""
    count = max(1, min(count, len(shards)))
    total = sum(s.size for s in shards)
    groups: list[list[Shard]] = [[]]
    done = 0
    for i, shard in enumerate(shards):
        left = len(shards) - i  # every later group needs a shard
        if groups[-1] and len(groups) < count and (done >= total * len(groups) / count or left <= count - len(groups)):
            groups.append([])
        groups[-1].append(shard)
        done += shard.size
    return groups


def all_at_once(jobs: list[Callable[[], T]]) -> list[T]:
    """Run the first job on this thread (it takes Ctrl-C) and the others on threads; their results in order.

    Every job is waited for; the error told is the first that is not just another job's abort."""
    if len(jobs) == 1:
        return [jobs[0]()]
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException | None] = [None] * len(jobs)

    def work(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BaseException as err:  # handed to the calling thread
            errors[i] = err

    workers = [threading.Thread(target=work, args=(i,), name=f"expo-stream-{i}") for i in range(1, len(jobs))]
    for worker in workers:
        worker.start()
    try:
        work(0)
    finally:
        for worker in workers:
            worker.join()
    failures = [e for e in errors if e is not None]
    if failures:
        raise next((e for e in failures if not isinstance(e, Aborted)), failures[0])
    return results


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
        run.formula(alpha),
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
        **run.refinements(alpha, energies=False),
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
