"""Hub to Hub with bounded local disk: inputs read by ranged requests, each output shard uploaded as it closes.

A 405B merge needs 2.4 TB of local disk the ordinary way (both inputs in the Hub cache, and the output). With
`--stream` nothing of the inputs is stored: `RangedSource` is a `TensorSource` that fetches each block with an HTTP
range request at the validated commit (the headers were already read that way; `range_client` makes the requests),
`connections` at a time, reading ahead the blocks the streaming walk announces while the current one is computed,
within a fixed memory budget, adjacent small blocks in one request, each request retried through network faults. The
output shards are written into a scratch folder as usual, and each is uploaded as an LFS object the moment it is
complete (`HfApi.preupload_lfs_files`, with the sha256 computed while writing) and then deleted, so the scratch
folder holds at most the shard being written and the one being uploaded. One commit at the end adds config,
card and side files and points at the uploaded shards: an interrupted run leaves no commit, and running it again
uploads only what the Hub does not have yet.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import profile as profiling
from ..core.sources import TensorInfo, itemsize, torch_dtype
from ..errors import HubError
from . import retry
from .hub import RemoteCheckpoint
from .range_client import RangeClient, Transient

if TYPE_CHECKING:
    import torch

CONNECTIONS = 4  # range requests in flight per input (`--connections`)
READ_AHEAD_BYTES = 128 * 1000**2  # per input: the most bytes read ahead and not yet used (at least; see below)
READ_AHEAD_PER_CONNECTION = 32 * 1000**2  # and this much per connection: two 16 MB blocks, one arriving, one waiting
COALESCE_BYTES = 8 * 1000**2  # adjacent small blocks ride in one request up to this size


def read_ahead_budget(connections: int) -> int:
    """The most bytes one input holds read ahead and not yet used: fixed, whatever the model size."""
    return max(READ_AHEAD_BYTES, READ_AHEAD_PER_CONNECTION * connections)


Key = tuple[Path, int, int]  # a block's file and byte range [begin, end)


def _references(buffers: list[bytearray]) -> list[int]:
    return [sys.getrefcount(buf) for buf in buffers]


ALONE = _references([bytearray()])[0]  # the count of a buffer only its list refers to (interpreters count apart)


class ReceiveBuffers:
    """Buffers that range requests receive into, used again once nothing refers to them.

    Fresh memory costs the kernel a page fault per 4 KB, which on a busy machine costs more than the copy that fills
    it: a streamed merge of two 810 GB inputs would fault in 1.6 TB. Whatever holds a block's bytes (a tensor made by
    `torch.frombuffer`, a memoryview in the writer's queue) holds a reference to its buffer, so a buffer nothing else
    refers to is free. The buffers kept add up to at most `limit` bytes; a request that finds no room gets a buffer
    of its own, freed as usual.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: list[bytearray] = []
        self._lock = threading.Lock()

    @property
    def kept_bytes(self) -> int:
        return sum(map(len, self._kept))

    def take(self, size: int) -> memoryview:
        """`size` bytes to receive into, from a free kept buffer when one is big enough."""
        with self._lock:
            free = {id(buf) for buf, count in zip(self._kept, _references(self._kept), strict=True) if count == ALONE}
            fitting = [buf for buf in self._kept if id(buf) in free and len(buf) >= size]
            if fitting:
                return memoryview(min(fitting, key=len))[:size]
            found = bytearray(-(-size // 2**20) * 2**20)  # whole MiB, so that it fits other blocks later
            if self.kept_bytes + len(found) > self.limit:
                self._kept = [buf for buf in self._kept if id(buf) not in free]  # make room: drop the free ones
            if self.kept_bytes + len(found) <= self.limit:
                self._kept.append(found)
            return memoryview(found)[:size]


@dataclass(eq=False)
class _Request:
    """One range request: the bytes of one or more adjacent blocks, fetched on a pool thread."""

    file: Path
    begin: int
    end: int
    future: Future[memoryview] | None = None


class RangedSource:
    """A Hub repo's tensors read block by block with HTTP range requests: a `TensorSource` needing no disk."""

    def __init__(
        self,
        remote: RemoteCheckpoint,
        token: str | None = None,
        connections: int = CONNECTIONS,
        budget: int | None = None,
    ) -> None:
        self.remote = remote
        self.path = Path(remote.repo_id)
        self.config = remote.config
        self.tensors = remote.tensors
        self.connections = connections
        self.budget = budget if budget is not None else read_ahead_budget(connections)
        self.read_ahead = 4 * connections  # blocks the streaming walk announces ahead of their turn
        self.bytes_fetched = 0
        self.reading: list[float] = []  # when the first range request started and the last one ended (monotonic)
        self.client = RangeClient(remote.repo_id, remote.sha, token)
        self.buffers = ReceiveBuffers(2 * self.budget)  # the budget read ahead, and the blocks in use
        self._starts: dict[Path, int] = {}
        self._announced: deque[Key] = deque()  # blocks announced and not started yet, in the walk's order
        self._pending: dict[Key, _Request] = {}  # blocks started ahead of their turn, and their request
        self._lock = threading.RLock()
        self._running = 0  # requests on a connection now: at most `connections`
        self._in_flight = 0  # bytes of the blocks started ahead and not used yet: at most `budget`
        self._pool: ThreadPoolExecutor | None = None

    @property
    def reserved_bytes(self) -> int:
        """Bytes of the reads started ahead of their turn and not yet used: never more than `budget`."""
        return self._in_flight

    @property
    def readable(self) -> bool:
        return True

    def __enter__(self) -> RangedSource:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.connections, thread_name_prefix=f"expo-range-{self.path.name}")
        files = sorted({t.file for t in self.tensors.values()} - set(self._starts))
        # where each file's data starts, asked `connections` at a time: a round trip per file adds up at 100 ms
        for file, size in zip(files, self._pool.map(lambda f: self._get(f, 0, 8), files), strict=True):
            self._starts[file] = 8 + int.from_bytes(bytes(size), "little")
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            for request in self._pending.values():
                if request.future is not None:
                    request.future.cancel()
            self._pending.clear()
            self._announced.clear()
            self._in_flight = 0
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.client.close()

    def _get(self, file: Path, begin: int, end: int) -> memoryview:
        """Bytes [begin, end) of one file of the repo, at the validated commit (so a retry never mixes revisions).

        Transient failures (a dropped connection or timeout, 408/425/429/5xx, a body shorter than asked) are
        retried with exponential backoff and jitter, or after the Retry-After the Hub asks for; what was received
        is kept and only the rest is asked for again. ATTEMPTS failures (progress or not), a block still incomplete
        BLOCK_SECONDS after its first failure, or the run's retry budget spent end the run with one line naming the
        file and the byte range (exit 7): running it again resumes. See `retry`.
        """
        name = file.as_posix()[len(self.remote.repo_id) + 1 :]
        if not self.reading:
            self.reading[:] = [time.monotonic()] * 2
        view = self.buffers.take(end - begin)
        what = f"{self.remote.repo_id}/{name}, bytes {begin}-{end - 1}"
        received = failures = 0
        deadline: float | None = None  # BLOCK_SECONDS after the first failure, however many bytes arrive after it
        while received < len(view):
            try:
                self.client.read_into(name, begin + received, view[received:])
                received = len(view)
                continue
            except Transient as err:
                reason, asked, progress = str(err), err.retry_after, err.received
            received += progress
            failures += 1
            deadline = deadline if deadline is not None else time.monotonic() + retry.BLOCK_SECONDS
            if failures >= retry.ATTEMPTS:
                raise HubError(f"{what}: {reason} ({retry.ATTEMPTS} attempts); run again to resume")
            retry.wait(failures, asked, f"{what}: {reason}", deadline)
        self.reading[1] = max(self.reading[1], time.monotonic())
        return view

    def _fetch(self, request: _Request) -> memoryview:
        """One request on a pool thread; its connection then takes the next announced blocks."""
        try:
            with profiling.stage("range request"):
                return self._get(request.file, request.begin, request.end)
        finally:
            with self._lock:
                self._running -= 1
                self._start()

    def _start(self) -> None:
        """Start the announced blocks, in order, while a connection is free and the budget holds them; adjacent
        small blocks (up to COALESCE_BYTES) go in one request. Called with the lock held."""
        while self._announced and self._pool is not None and self._running < self.connections:
            file, begin, end = self._announced[0]
            if self._in_flight + end - begin > self.budget:
                return
            keys = [self._announced.popleft()]
            while self._announced and (following := self._announced[0])[0] == file and following[1] == end:
                if following[2] - begin > COALESCE_BYTES or self._in_flight + following[2] - begin > self.budget:
                    break
                keys.append(self._announced.popleft())
                end = following[2]
            request = _Request(file, begin, end)
            for key in keys:
                self._pending[key] = request
            self._in_flight += end - begin
            self._running += 1
            request.future = self._pool.submit(self._fetch, request)

    def _range(self, info: TensorInfo, start: int, stop: int) -> Key:
        size = itemsize(info.dtype)
        begin = self._starts[info.file] + info.offset
        return info.file, begin + start * size, begin + stop * size

    def _block(self, info: TensorInfo, start: int, stop: int) -> memoryview:
        """A block's bytes: from the read started ahead of its turn (a view of it, when several adjacent blocks
        rode in one request), or from one made now."""
        key = self._range(info, start, stop)
        with self._lock:
            request = self._pending.pop(key, None)
            if request is not None:
                self._in_flight -= key[2] - key[1]
                self._start()
            elif key in self._announced:  # too big for the budget on its own: read now, not ahead
                self._announced.remove(key)
        with profiling.stage("wait: network"):
            if request is None or request.future is None:
                data = self._get(*key)
            else:
                data = request.future.result()[key[1] - request.begin : key[2] - request.begin]
        self.bytes_fetched += len(data)
        return data

    def raw(self, info: TensorInfo, start: int, stop: int) -> memoryview:
        return self._block(info, start, stop)

    def flat(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        import torch  # torch loads on first use, not with the package

        data = self._block(info, start, stop)  # a buffer (or a view) of its own: no copy
        dtype = torch_dtype(info.dtype) if info.is_float else torch.uint8
        if not data:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(data, dtype=dtype)

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        """Announce a block the walk will ask for soon: it is read ahead on one of `connections` threads as soon as
        one is free and the blocks read ahead and not used yet leave room for it within `budget` bytes (memory stays
        bounded, whatever the model size); adjacent small blocks ride in one request: one round trip for many
        small tensors."""
        key = self._range(info, start, stop)
        with self._lock:
            if self._pool is None or key in self._pending or key in self._announced:
                return
            self._announced.append(key)
            self._start()
