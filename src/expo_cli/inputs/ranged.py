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

import threading
import time
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
READ_AHEAD_BYTES = 128 * 1000**2  # per input: the most bytes read ahead and not yet used
COALESCE_BYTES = 8 * 1000**2  # adjacent small blocks ride in one request up to this size


@dataclass(eq=False)
class _Request:
    """One range request: the bytes of one or more adjacent blocks, fetched on a pool thread."""

    file: Path
    begin: int
    end: int
    future: Future[bytearray] | None = None
    started: bool = False


class RangedSource:
    """A Hub repo's tensors read block by block with HTTP range requests: a `TensorSource` needing no disk."""

    def __init__(
        self,
        remote: RemoteCheckpoint,
        token: str | None = None,
        connections: int = CONNECTIONS,
        budget: int = READ_AHEAD_BYTES,
    ) -> None:
        self.remote = remote
        self.path = Path(remote.repo_id)
        self.config = remote.config
        self.tensors = remote.tensors
        self.connections = connections
        self.budget = budget
        self.read_ahead = 2 * connections  # blocks the streaming walk announces ahead of their turn
        self.bytes_fetched = 0
        self.client = RangeClient(remote.repo_id, remote.sha, token)
        self._starts: dict[Path, int] = {}
        self._pending: dict[tuple[Path, int, int], _Request] = {}  # announced blocks, by their byte range
        self._open: _Request | None = None  # the newest request, while no connection has taken it: it may grow
        self._lock = threading.Lock()
        self._in_flight = 0  # bytes of the announced blocks not yet used: at most `budget`
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
            self._pool = ThreadPoolExecutor(self.connections, thread_name_prefix="expo-range")
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
            self._open = None
            self._in_flight = 0
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.client.close()

    def _get(self, file: Path, begin: int, end: int) -> bytearray:
        """Bytes [begin, end) of one file of the repo, at the validated commit (so a retry never mixes revisions).

        Transient failures (a dropped connection or timeout, 408/425/429/5xx, a body shorter than asked) are
        retried with exponential backoff and jitter, or after the Retry-After the Hub asks for; what was received
        is kept and only the rest is asked for again. ATTEMPTS failures in a row without a byte of progress end the
        run with one line naming the file and the byte range (exit 7): running it again resumes. See `retry`.
        """
        name = file.as_posix()[len(self.remote.repo_id) + 1 :]
        data = bytearray(end - begin)
        view = memoryview(data)
        received = failures = 0
        while received < len(data):
            try:
                self.client.read_into(name, begin + received, view[received:])
                received = len(data)
                continue
            except Transient as err:
                reason, asked, progress = str(err), err.retry_after, err.received
            received += progress
            failures = 0 if progress else failures + 1
            if failures >= retry.ATTEMPTS:
                raise HubError(
                    f"{self.remote.repo_id}/{name}, bytes {begin}-{end - 1}: {reason} ({retry.ATTEMPTS} attempts); "
                    "run again to resume"
                )
            time.sleep(retry.wait(failures, asked))
        return data

    def _fetch(self, request: _Request) -> bytearray:
        """A pool thread takes a request: from now on it does not grow."""
        with self._lock:
            request.started = True
            if self._open is request:
                self._open = None
        with profiling.stage("range request"):
            return self._get(request.file, request.begin, request.end)

    def _range(self, info: TensorInfo, start: int, stop: int) -> tuple[Path, int, int]:
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
        with profiling.stage("wait: network"):
            if request is None or request.future is None:
                data = memoryview(self._get(*key))
            else:
                whole = request.future.result()
                data = memoryview(whole)[key[1] - request.begin : key[2] - request.begin]
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
        """Start reading a block the walk will ask for soon, on one of `connections` threads, unless the reads in
        flight already hold `budget` bytes (it is then read when asked for): memory stays bounded, whatever the
        model size. A small block that starts where the newest request ends, while no connection has taken that
        request yet, rides along in it (up to COALESCE_BYTES): adjacent small tensors cost one round trip."""
        key = self._range(info, start, stop)
        size = key[2] - key[1]
        with self._lock:
            if self._pool is None or key in self._pending or self._in_flight + size > self.budget:
                return
            self._in_flight += size
            request = self._open
            if (
                request is not None
                and not request.started
                and request.file == key[0]
                and request.end == key[1]
                and request.end - request.begin + size <= COALESCE_BYTES
            ):
                request.end = key[2]
                self._pending[key] = request
                return
            request = _Request(*key)
            self._pending[key] = request
            self._open = request if size < COALESCE_BYTES else None
            request.future = self._pool.submit(self._fetch, request)
