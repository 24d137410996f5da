"""Where computed tensors go: the interface the streaming walk writes to, and the shard files as one sink.

The walk asks a sink for a `buffer` to compute a block into, then `put`s it back filled (or `put`s raw bytes of a
tensor copied unchanged); `close` waits until everything is durable and returns the sha256 of every file written.
The buffers belong to the sink because only it knows what they are: the shard sink lends a few reused host
buffers (pinned for a GPU's asynchronous copies), so memory does not grow with the model; a sink that streams
θ(α) into a loaded model's parameters (expo tune) lends the parameter's own memory; an uploading sink (Hub
streaming) is a shard sink whose `on_shard_closed` hook sends each file as soon as it is complete.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..constants import CHUNK_ELEMENTS
from . import profile as profiling
from .sources import itemsize, torch_dtype
from .writer import Shard, ShardStream, TensorSpec

if TYPE_CHECKING:
    import torch

BUFFERS = 4  # blocks in flight per shard sink: one being computed, the others being written and hashed


class TensorSink(Protocol):
    def buffer(self, t: TensorSpec, start: int, stop: int) -> torch.Tensor:
        """A tensor of `t.out_dtype` holding `stop - start` elements, to compute elements [start, stop) into."""

    def put(
        self,
        t: TensorSpec,
        start: int,
        stop: int,
        data: torch.Tensor | memoryview,
        ready: Callable[[], object] | None = None,
    ) -> None:
        """Elements [start, stop) of `t`: a buffer from `buffer()` now filled (after `ready()`, for an
        asynchronous device copy), or the raw bytes of a block copied unchanged."""

    def close(self) -> dict[str, str]:
        """Wait until everything is durable; return file name -> sha256 of what was written."""

    def abort(self) -> None:
        """Stop without waiting: what was written is being discarded."""


class BufferPool:
    """A few reused host buffers of one block each: what bounds a run's memory, whatever the model size.

    Shard sinks of one run share a pool (a sweep writes several outputs from the same blocks); a buffer goes
    back to it once its bytes are written and hashed.
    """

    def __init__(
        self, shards: Sequence[Shard], pinned: bool = False, chunk: int = CHUNK_ELEMENTS, count: int = BUFFERS
    ) -> None:
        import torch  # torch loads on first use, not with the package

        widest = max((itemsize(t.out_dtype) for s in shards for t in s.tensors), default=1)
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(count):
            self._free.put(torch.empty(chunk * widest, dtype=torch.uint8, pin_memory=pinned))

    def take(self, check: Callable[[], None]) -> torch.Tensor:
        """A free buffer; waits for one to come back, calling `check()` (which raises a writer's error) meanwhile."""
        with profiling.stage("wait: no free buffer"):
            while True:
                try:
                    return self._free.get(timeout=0.5)
                except queue.Empty:
                    check()

    def give_back(self, buf: torch.Tensor) -> None:
        self._free.put(buf)


class ShardSink:
    """Writes planned safetensors shards in order (see `writer.ShardStream`) from a pool of host buffers."""

    def __init__(
        self,
        folder: Path,
        shards: Sequence[Shard],
        pool: BufferPool | None = None,
        on_shard_closed: Callable[[Path, str], None] | None = None,
        transient: bool = False,
    ) -> None:
        self.stream = ShardStream(folder, shards, on_shard_closed=on_shard_closed, transient=transient)
        self.pool = pool or BufferPool(shards)
        self._lent: dict[int, torch.Tensor] = {}

    def buffer(self, t: TensorSpec, start: int, stop: int) -> torch.Tensor:
        """A free host buffer; waits for the writer to return one (and fails if the writer failed)."""
        buf = self.pool.take(self.stream.check)
        view = buf.view(torch_dtype(t.out_dtype))[: stop - start]  # computed blocks are floating
        self._lent[view.data_ptr()] = buf
        return view

    def put(
        self,
        t: TensorSpec,
        start: int,
        stop: int,
        data: torch.Tensor | memoryview,
        ready: Callable[[], object] | None = None,
    ) -> None:
        if isinstance(data, memoryview):
            self.stream.write(data, ready=ready)
            return
        buf = self._lent.pop(data.data_ptr())
        view = memoryview(buf[: data.numel() * data.element_size()].numpy())
        self.stream.write(view, release=lambda: self.pool.give_back(buf), ready=ready)

    def close(self) -> dict[str, str]:
        self.stream.close()
        return self.stream.checksums

    def abort(self) -> None:
        self.stream.abort()


class ParameterSink:
    """Writes θ(α) straight into a loaded model's parameters (expo tune): the buffers it lends are the
    parameters' own memory, so a candidate costs no copy of the model and nothing is written to disk."""

    def __init__(self, targets: dict[str, torch.Tensor]) -> None:
        self.targets = targets  # tensor name -> the contiguous parameter (or buffer) it is loaded into

    def buffer(self, t: TensorSpec, start: int, stop: int) -> torch.Tensor:
        return self.targets[t.name].view(-1)[start:stop]

    def put(
        self,
        t: TensorSpec,
        start: int,
        stop: int,
        data: torch.Tensor | memoryview,
        ready: Callable[[], object] | None = None,
    ) -> None:
        if ready is not None:
            ready()
        if isinstance(data, memoryview):  # bit for bit an input block
            import torch  # torch loads on first use, not with the package

            target = self.targets[t.name].view(-1)[start:stop]
            target.view(torch.uint8).copy_(torch.frombuffer(data, dtype=torch.uint8))

    def close(self) -> dict[str, str]:
        return {}

    def abort(self) -> None:
        pass
