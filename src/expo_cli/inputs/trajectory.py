"""The least-squares line through k checkpoints, read as two checkpoints: its values at the first and last steps.

`expo merge --trajectory` with more than two checkpoints extrapolates between these two views exactly as ExPO
between --sft and --aligned (see `expo_cli.trajectory`): each view is a source whose blocks are computed from the
same block of every checkpoint, kept wide (float32, float64 when any checkpoint is float64) so that the output is
rounded once, by the engine. The k blocks are read once for both views (the block the other view asked for last is
kept), into buffers each thread allocates once: k widened blocks, each view's result and a scratch, whatever the
model size.

Every checkpoint must hold the same tensors with the same shapes (a trajectory is one training run); tensors that
are not floating (copied, never fitted) come from the last checkpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.sources import TensorInfo, TensorSource, compute_dtype, rounded_bytes, torch_dtype
from ..errors import MismatchError
from ..trajectory import Milestone, line_weights

if TYPE_CHECKING:
    import torch

SHOWN = 3  # tensors named in one error line


class Trajectory:
    """k open checkpoints at increasing steps, read block by block in lockstep."""

    def __init__(self, milestones: Sequence[Milestone], sources: Sequence[TensorSource]) -> None:
        self.steps = [m.step for m in milestones]
        self.milestones = list(milestones)
        self.sources = list(sources)
        self.last = self.sources[-1]
        self._kept = threading.local()  # per thread: a merge writes several shards at once
        self._opened = 0
        self._opening = threading.Lock()
        self._views = 0

    def check(self) -> None:
        """Every checkpoint holds the last one's floating tensors with the same shapes (from headers alone)."""
        wanted = {name: info.shape for name, info in self.last.tensors.items()}
        for milestone, source in zip(self.milestones[:-1], self.sources[:-1], strict=True):
            have = {name: info.shape for name, info in source.tensors.items()}
            missing = [n for n in wanted if n not in have and self.last.tensors[n].is_float]
            extra = [n for n in have if n not in wanted]
            shapes = [f"{n} {have[n]} vs {wanted[n]}" for n in wanted if n in have and have[n] != wanted[n]]
            for what, names in (("lacks", missing), ("has tensors the last one lacks:", extra), ("shapes", shapes)):
                if names:
                    shown = ", ".join(names[:SHOWN]) + (f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else "")
                    raise MismatchError(
                        f"--trajectory {milestone}: {what} {shown}; every checkpoint of a trajectory needs the same "
                        "tensors and shapes (two checkpoints may differ as --sft and --aligned may)"
                    )
            for name, info in source.tensors.items():
                if info.is_float != self.last.tensors[name].is_float:
                    raise MismatchError(
                        f"--trajectory {milestone}: tensor {name!r} is {info.dtype} there and "
                        f"{self.last.tensors[name].dtype} in the last checkpoint"
                    )

    def at(self, step: float) -> Fitted:
        """The line's values at `step`, as a source (each view has its own result buffer, and one scratch)."""
        self._views += 1
        return Fitted(self, step, slot=len(self.sources) + 2 * (self._views - 1))

    def blocks(self, info: TensorInfo, start: int, stop: int) -> list[torch.Tensor]:
        """Elements [start, stop) of tensor `info` in every checkpoint, widened to their common compute dtype."""
        key = (info.name, start, stop)
        kept = getattr(self._kept, "block", None)
        if kept is not None and kept[0] == key:
            return kept[1]
        infos = [source.tensors[info.name] for source in self.sources]
        wide = compute_dtype(*(torch_dtype(i.dtype) for i in infos))
        read = [
            self.buffer(slot, wide, stop - start).copy_(source.flat(i, start, stop))
            for slot, (source, i) in enumerate(zip(self.sources, infos, strict=True))
        ]
        self._kept.block = (key, read)
        return read

    def buffer(self, slot: int, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """This thread's reusable buffer `slot` (0 … k − 1: the checkpoints' blocks; then the views' results and
        a scratch): a fixed set of blocks per thread, allocated once, whatever the number of tensors."""
        import torch  # torch loads on first use, not with the package

        pool = self._kept.__dict__.setdefault("pool", {})
        held = pool.get((slot, dtype))
        if held is None or held.numel() < numel:
            held = pool[(slot, dtype)] = torch.empty(numel, dtype=dtype)
        return held[:numel]

    def enter(self) -> None:
        """Open every checkpoint (once, however many views and threads use them)."""
        with self._opening:
            if self._opened == 0:
                for source in self.sources:
                    source.__enter__()
            self._opened += 1

    def exit(self, *exc: object) -> None:
        with self._opening:
            self._opened -= 1
            if self._opened == 0:
                for source in reversed(self.sources):
                    source.__exit__(*exc)
        self._kept.block = None
        self._kept.__dict__.pop("pool", None)


class Fitted:
    """The least-squares line through a trajectory's checkpoints at one step, under the last one's names."""

    def __init__(self, trajectory: Trajectory, step: float, slot: int) -> None:
        self.trajectory = trajectory
        self.step = step
        self.slot = slot  # of its result in the trajectory's buffers
        self.weights = line_weights(trajectory.steps, step)
        at = [source for m, source in zip(trajectory.milestones, trajectory.sources, strict=True) if m.step == step]
        self.path: Path = (at or [trajectory.last])[0].path  # the checkpoint saved at this step: provenance names it
        self.config: dict[str, Any] = trajectory.last.config
        self.tensors = trajectory.last.tensors

    @property
    def readable(self) -> bool:
        return all(source.readable for source in self.trajectory.sources)

    def __enter__(self) -> Fitted:
        self.trajectory.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.trajectory.exit(*exc)

    def flat(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        """Σ w_i·θ_i, written θ_k + Σ_{i<k} w_i·(θ_i − θ_k) (the weights sum to 1), in the compute dtype, into this
        view's buffer: valid until its next call in this thread (the engine uses a block before asking for the
        next)."""
        import torch  # torch loads on first use, not with the package

        if not info.is_float:
            return self.trajectory.last.flat(info, start, stop)
        *earlier, last = self.trajectory.blocks(info, start, stop)
        result = self.trajectory.buffer(self.slot, last.dtype, last.numel()).copy_(last)
        difference = self.trajectory.buffer(self.slot + 1, last.dtype, last.numel())
        for weight, values in zip(self.weights, earlier, strict=False):
            result.add_(torch.sub(values, last, out=difference), alpha=weight)
        return result

    def raw(self, info: TensorInfo, start: int, stop: int) -> memoryview:
        if not info.is_float:
            return self.trajectory.last.raw(info, start, stop)
        return rounded_bytes(self.flat(info, start, stop), info.dtype)

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        for source in self.trajectory.sources:
            if info.name in source.tensors:
                source.prefetch(source.tensors[info.name], start, stop)
