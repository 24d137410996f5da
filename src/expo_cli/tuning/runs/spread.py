"""A tune spread over processes: job-array parts and worker processes, each evaluating candidates into one run
folder, whose results are the same however the work was split.

Every candidate's batches are seeded by their number (not by the process), and a candidate is claimed before it is
made (`claims`), so any split gives the responses one process would have made. A part evaluates its share of the
grid (`share`: every N-th candidate, α = 0 in part 1), waiting for a candidate another live process is making;
`--data-parallel K` runs K workers (`workers`: this process and K - 1 new ones, each with its own GPUs or cores)
that take the share's candidates as they come free. The statistics, the held-out confirmation and the output are
then computed once, by the part that finds every grid candidate done (or `--finish`), from the run folder.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ...arrays import Part
from ...errors import ExpoError, Interrupted, UsageError
from ..decision.candidate import SELECTION
from .claims import HEARTBEAT, Busy
from .evaluation import Evaluator

CORES = "EXPO_WORKER_CORES"  # a worker's share of the CPU cores, in its environment


@dataclass(frozen=True)
class Spread:
    """How a tune is split: this process's part of a job array (None: the whole grid), --finish, and the worker
    processes it starts (`data_parallel`) or is one of (`worker`: its index and their number)."""

    part: Part | None = None
    finish: bool = False
    data_parallel: int = 1
    worker: tuple[int, int] | None = None

    @property
    def split(self) -> bool:
        """Whether other processes may share the run folder."""
        return self.part is not None or self.finish or self.data_parallel > 1 or self.worker is not None

    def check(self, fresh: bool, rescore: bool, run_dir: object) -> None:
        """Refused before any model loads: what would spoil the other processes' work or cannot be shared."""
        if self.data_parallel < 1:
            raise UsageError(f"--data-parallel {self.data_parallel}: must be at least 1")
        if self.finish and (self.part is not None or self.data_parallel > 1):
            raise UsageError("--finish runs in one process, after the parts: drop --part and --data-parallel")
        if self.split and fresh:
            raise UsageError("--fresh would delete the other processes' work: empty the run folder before the parts")
        if self.split and rescore:
            raise UsageError("--rescore runs in one process: drop --part, --finish and --data-parallel")
        if (self.part is not None or self.finish) and run_dir is None:
            option = "--finish" if self.finish else "--part"
            raise UsageError(f"{option} needs --run-dir, a folder on storage every part of the job array sees")

    def label(self) -> str:
        if self.worker is not None:
            return f"worker {self.worker[0] + 1}/{self.worker[1]}"
        return f"part {self.part}" if self.part is not None else "tune"


def share(grid: Sequence[float], part: Part | None) -> list[float]:
    """The grid candidates a part evaluates: every N-th, from its index (α = 0, the grid's first, in part 1)."""
    return list(grid) if part is None else list(grid[part.index - 1 :: part.count])


def owner(grid: Sequence[float], alpha: float, count: int) -> int:
    """The part (1-based) whose share holds a grid candidate."""
    return list(grid).index(alpha) % count + 1


def evaluate_share(
    evaluate: Evaluator, alphas: Sequence[float], wait: bool, inform: Callable[[str], None], label: str
) -> None:
    """Evaluate each candidate on the selection prompts, in order; one that another live process is making is
    waited for (`wait`, a part: its share is its job) or left to it (a worker)."""
    prefix = f"{label}: " if label else ""
    for alpha in alphas:
        while True:
            try:
                candidate = evaluate(alpha, SELECTION)
            except Busy as busy:
                if not wait:
                    break
                inform(f"{prefix}α={alpha:g}: {busy}; waiting for it")
                time.sleep(HEARTBEAT)
                continue
            if candidate.generated:
                seconds = candidate.update_seconds + candidate.generate_seconds + candidate.score_seconds
                inform(f"{prefix}α={alpha:g} evaluated ({candidate.generated} responses, {seconds:.1f} s)")
            break


@contextmanager
def workers(
    target: Callable[[dict[str, Any], int, int, dict[str, str]], None],
    arguments: dict[str, Any],
    count: int,
    environments: list[dict[str, str]],
) -> Iterator[None]:
    """Workers 2..count run `target(arguments, index, count, environment)` in new processes while the body runs
    worker 1 in this one (already started, its model loaded once for the confirmation too), on the first
    environment's cores; every worker is waited for, and the first error raised once all have ended (the others'
    work is kept in the run folder)."""
    context = multiprocessing.get_context("spawn")  # no forked copy of a loaded model or of CUDA state
    failure: BaseException | None = None
    with ProcessPoolExecutor(count - 1, mp_context=context) as pool:
        futures = [pool.submit(target, arguments, k, count, environments[k]) for k in range(1, count)]
        try:
            with _confined(environments[0]):
                yield
        except BaseException as err:  # noqa: BLE001 - raised once the other workers have ended
            failure = err
        for future in as_completed(futures):
            try:
                future.result()
            except BrokenProcessPool:
                failure = failure or ExpoError(
                    "a worker process died (killed, or out of memory); the work so far is kept in the run folder: "
                    "the same command resumes"
                )
            except BaseException as err:  # noqa: BLE001 - the first one is raised after the others end
                failure = failure or err
    if failure is not None:
        raise failure


@contextmanager
def _confined(environment: dict[str, str]) -> Iterator[None]:
    """This process on its worker's share of the cores (the GPUs it uses are the first ones already), then on all
    of them again."""
    cores = environment.get(CORES)
    if not cores or not hasattr(os, "sched_setaffinity"):
        yield
        return
    import torch  # torch loads on first use, not with the package

    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    mine = [int(c) for c in cores.split(",")]
    os.sched_setaffinity(0, mine)
    torch.set_num_threads(len(mine))
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)


def worker_environments(count: int, device: str, tensor_parallel_size: int) -> list[dict[str, str]]:
    """What each worker may use: its `tensor_parallel_size` GPUs, or its share of this process's CPU cores."""
    if device == "cuda":
        import torch  # torch loads on first use, not with the package

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        needed = count * tensor_parallel_size
        if needed > len(devices):
            raise UsageError(
                f"--data-parallel {count} × --tensor-parallel-size {tensor_parallel_size} needs {needed} GPUs; "
                f"{len(devices)} visible"
            )
        return [
            {"CUDA_VISIBLE_DEVICES": ",".join(devices[k * tensor_parallel_size : (k + 1) * tensor_parallel_size])}
            for k in range(count)
        ]
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if count > len(cores):
        raise UsageError(
            f"--data-parallel {count}: this process may use {len(cores)} CPU core(s); a worker needs one at least"
        )
    each = len(cores) // count
    return [{CORES: ",".join(map(str, cores[k * each : (k + 1) * each]))} for k in range(count)]


def enter_worker(environment: dict[str, str]) -> None:
    """In a new worker process, before torch starts: its devices or cores, and SIGTERM (a preempted job) ending it
    as Ctrl-C does, releasing its claims."""
    os.environ.update({k: v for k, v in environment.items() if k != CORES})
    if cores := environment.get(CORES):
        mine = [int(c) for c in cores.split(",")]
        os.sched_setaffinity(0, mine)
        os.environ.setdefault("OMP_NUM_THREADS", str(len(mine)))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cores)

        import torch  # torch loads on first use, not with the package

        torch.set_num_threads(len(mine))

    def interrupted(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, interrupted)
