"""Hub to Hub with bounded local disk: inputs read by ranged requests, each output shard uploaded as it closes.

A 405B merge needs 2.4 TB of local disk the ordinary way (both inputs in the Hub cache, and the output). With
`--stream` nothing of the inputs is stored: `RangedSource` is a `TensorSource` that fetches each block with an HTTP
range request at the validated commit (the headers were already read that way), `connections` at a time, reading
ahead the blocks the streaming walk announces while the current one is computed, within a fixed memory budget. The
output shards are written into a scratch folder as usual, and each is uploaded as an LFS object the moment it is
complete (`HfApi.preupload_lfs_files`, with the sha256 computed while writing) and then deleted, so the scratch
folder holds at most the shard being written and the one being uploaded. One commit at the end adds config,
card and side files and points at the uploaded shards: an interrupted run leaves no commit, and running it again
uploads only what the Hub does not have yet.
"""

from __future__ import annotations

import email.utils
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.sources import TensorInfo, itemsize, torch_dtype
from ..errors import HubError
from .hub import RemoteCheckpoint, hub_errors, network_cause

if TYPE_CHECKING:
    import torch

CONNECTIONS = 4  # range requests in flight per input (`--connections`)
READ_AHEAD_BYTES = 128 * 1000**2  # per input: the most bytes read ahead and not yet used
RETRIED_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})  # the Hub or a proxy asks to come back later
ATTEMPTS = 8  # failures in a row (no byte of progress) before a range request gives up
BACKOFF_SECONDS = (0.5, 16.0)  # the first wait, doubled at each failure up to the second; about a minute in all
MAX_RETRY_AFTER_SECONDS = 300  # a longer Retry-After is capped


class _Transient(Exception):
    """A failure worth retrying, with the wait the server asked for (seconds), if it asked."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def _backoff(failures: int) -> float:
    """Exponential backoff with jitter: a random wait in the upper half of min(cap, base·2^(n−1))."""
    base, cap = BACKOFF_SECONDS
    return random.uniform(0.5, 1.0) * min(cap, base * 2 ** (failures - 1))


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds to wait (it may be a number of seconds or an HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


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
        self.token = token
        self.connections = connections
        self.budget = budget
        self.read_ahead = 2 * connections  # blocks the streaming walk announces ahead of their turn
        self.bytes_fetched = 0
        self._starts: dict[Path, int] = {}
        self._pending: dict[tuple[Path, int, int], Future[bytearray]] = {}
        self._in_flight = 0  # bytes of the pending reads: at most `budget`
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
        for file in {t.file for t in self.tensors.values()} - set(self._starts):
            self._starts[file] = 8 + int.from_bytes(bytes(self._get(file, 0, 8)), "little")
        return self

    def __exit__(self, *exc: object) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._in_flight = 0
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _get(self, file: Path, begin: int, end: int) -> bytearray:
        """Bytes [begin, end) of one file of the repo, at the validated commit (so a retry never mixes revisions).

        Transient failures (a dropped connection or timeout, 408/425/429/5xx, a body shorter than asked) are
        retried with exponential backoff and jitter, or after the Retry-After the Hub asks for; what was received
        is kept and only the rest is asked for again. ATTEMPTS failures in a row without a byte of progress end the
        run with one line naming the file and the byte range (exit 7): running it again resumes.
        """
        # the Hub client loads when the Hub is used
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session

        name = file.as_posix()[len(self.remote.repo_id) + 1 :]
        url = hf_hub_url(self.remote.repo_id, name, revision=self.remote.sha)
        received = bytearray()
        failures = 0
        while len(received) < end - begin:
            headers = {**build_hf_headers(token=self.token), "Range": f"bytes={begin + len(received)}-{end - 1}"}
            before = len(received)
            try:
                self._receive(get_session(), url, headers, received, end - begin)
                if len(received) < end - begin:
                    raise _Transient(f"a body {end - begin - len(received)} bytes short")
                continue
            except _Transient as err:
                reason, wait = str(err), err.retry_after
            except HubError:
                raise  # the Hub answered: not found, no access, ...
            except Exception as err:
                cause = network_cause(err)
                if cause is None:
                    raise
                reason, wait = f"{type(cause).__name__}: {cause}", None
            failures = 0 if len(received) > before else failures + 1
            if failures >= ATTEMPTS:
                raise HubError(
                    f"{self.remote.repo_id}/{name}, bytes {begin}-{end - 1}: {reason} ({ATTEMPTS} attempts); "
                    "run again to resume"
                )
            time.sleep(wait if wait is not None else _backoff(max(failures, 1)))
        return received

    def _receive(self, session: Any, url: str, headers: dict[str, str], into: bytearray, size: int) -> None:
        """One range request, appending what arrives to `into` (kept if the connection drops mid-body)."""
        from huggingface_hub.utils import hf_raise_for_status  # the Hub client loads when the Hub is used

        with session.stream("GET", url, headers=headers, follow_redirects=True) as response:
            if response.status_code in RETRIED_STATUSES:
                raise _Transient(f"HTTP {response.status_code}", _retry_after(response.headers.get("Retry-After")))
            if response.status_code >= 400:
                response.read()
                with hub_errors(self.remote.repo_id, self.remote.revision):
                    hf_raise_for_status(response)
            for chunk in response.iter_bytes():  # as it arrives: kept if the connection then drops
                into += chunk if len(into) + len(chunk) <= size else chunk[: size - len(into)]

    def _range(self, info: TensorInfo, start: int, stop: int) -> tuple[Path, int, int]:
        size = itemsize(info.dtype)
        begin = self._starts[info.file] + info.offset
        return info.file, begin + start * size, begin + stop * size

    def _block(self, info: TensorInfo, start: int, stop: int) -> bytearray:
        """A block's bytes: the read started ahead of its turn, or one made now."""
        key = self._range(info, start, stop)
        pending = self._pending.pop(key, None)
        if pending is None:
            data = self._get(*key)
        else:
            self._in_flight -= key[2] - key[1]
            data = pending.result()
        self.bytes_fetched += len(data)
        return data

    def raw(self, info: TensorInfo, start: int, stop: int) -> memoryview:
        return memoryview(self._block(info, start, stop))

    def flat(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        import torch  # torch loads on first use, not with the package

        data = self._block(info, start, stop)  # a fresh buffer of its own: no copy
        if not data:
            return torch.empty(0, dtype=torch_dtype(info.dtype) if info.is_float else torch.uint8)
        return torch.frombuffer(data, dtype=torch_dtype(info.dtype) if info.is_float else torch.uint8)

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        """Start reading a block the walk will ask for soon, on one of `connections` threads, unless the reads in
        flight already hold `budget` bytes (it is then read when asked for): memory stays bounded, whatever the
        model size."""
        key = self._range(info, start, stop)
        size = key[2] - key[1]
        if self._pool is None or key in self._pending or self._in_flight + size > self.budget:
            return
        self._in_flight += size
        self._pending[key] = self._pool.submit(self._get, *key)
