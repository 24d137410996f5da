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
from .hub import RemoteCheckpoint
from .integrity import FileDigest
from .range_client import RangeClient

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
        self.bytes_verified = 0  # of those, read again by `verify` (blocks the merge used out of file order)
        self.reading: list[float] = []  # when the first range request started and the last one ended (monotonic)
        self.client = RangeClient(remote.repo_id, remote.sha, token)
        self.buffers = ReceiveBuffers(2 * self.budget)  # the budget read ahead, and the blocks in use
        self._starts: dict[Path, int] = remote.data_starts
        self._digests: dict[Path, FileDigest] = {}  # each file's hash, fed the blocks as they are used
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
        for file in sorted({t.file for t in self.tensors.values()} - set(self._digests)):
            self._digests[file] = digest = FileDigest(str(file), self.remote.listed[file.name])
            digest.feed(0, self.remote.headers[file])  # the header, as read and validated
        return self

    def verify(self) -> None:
        """Check every file read against the hash the Hub lists (see `integrity`), reading again what the merge
        skipped or used out of order; a HubError naming the file when they differ. Called before the commit."""
        for file, digest in sorted(self._digests.items()):
            digest.finish(lambda begin, end, file=file: self._read(file, begin, end))

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
        """Bytes [begin, end) of one file of the repo, at the validated commit (so a retry never mixes revisions),
        through network faults: see `RangeClient.read` (the bounds on retrying are `retry`'s)."""
        name = file.as_posix()[len(self.remote.repo_id) + 1 :]
        if not self.reading:
            self.reading[:] = [time.monotonic()] * 2
        view = self.buffers.take(end - begin)
        self.client.read(name, begin, view)
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
        with profiling.stage("hash"):  # here, not on a thread of its own: measured faster on 2 busy cores
            self._digests[info.file].feed(key[1], data)
        self.bytes_fetched += len(data)
        return data

    def _read(self, file: Path, begin: int, end: int) -> memoryview:
        """Bytes read again for `verify`: counted as read."""
        data = self._get(file, begin, end)
        self.bytes_fetched += len(data)
        self.bytes_verified += len(data)
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
