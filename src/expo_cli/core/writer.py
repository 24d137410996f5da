"""Writing the output shards as a stream: plan from sizes, header first, then every tensor at its offset.

Because every output tensor's dtype and shape are known from the input headers, each shard's safetensors
header can be written before any data exists. Tensors are then appended in order as they are computed, on
a background thread, so no shard is ever accumulated in memory and writing overlaps the arithmetic.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..constants import OUTPUT_FILENAME_PATTERN, SAFETENSORS_INDEX_FILE
from ..errors import OutputError
from ..fsutil import human_bytes, write_durably
from . import profile as profiling


class TensorSpec(Protocol):
    name: str
    out_dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class Shard:
    filename: str
    tensors: list[TensorSpec]
    header: bytes

    @property
    def size(self) -> int:
        """Bytes on disk: the 8-byte length, the header, the data."""
        return 8 + len(self.header) + sum(t.nbytes for t in self.tensors)


def safetensors_header(tensors: Sequence[TensorSpec], metadata: dict[str, str]) -> bytes:
    """The JSON header for tensors stored back to back in this order, padded to 8 bytes as safetensors does."""
    entries: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for t in tensors:
        entries[t.name] = {"dtype": t.out_dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(value: int | str) -> int:
    """Bytes in "5GB", "500MB", "2GiB" or 123: decimal units like huggingface_hub, binary ones when asked."""
    if isinstance(value, int):
        return value
    text = value.strip().upper().replace(" ", "")
    number = text.rstrip("KMGTIB")
    unit = text[len(number) :]
    try:
        size = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise ValueError(f"not a size: {value!r}") from None
    return int(size)


def plan_shards(tensors: Sequence[TensorSpec], max_shard_size: int | str) -> list[Shard]:
    """Split tensors into HF-named shards of at most `max_shard_size` bytes, keeping their order.

    Greedy like huggingface_hub's `split_state_dict_into_shards_factory` (a tensor over the limit gets a shard
    of its own), but in order: the output is written in the order the inputs are read.
    """
    limit = parse_size(max_shard_size)
    groups: list[list[TensorSpec]] = []
    size = 0
    for t in tensors:
        if not groups or (size + t.nbytes > limit and size > 0):
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    if not groups:
        groups.append([])
    count = len(groups)
    names = (
        [OUTPUT_FILENAME_PATTERN.format(suffix="")]
        if count == 1
        else [OUTPUT_FILENAME_PATTERN.format(suffix=f"-{i:05d}-of-{count:05d}") for i in range(1, count + 1)]
    )
    pairs = zip(names, groups, strict=True)
    return [Shard(name, group, safetensors_header(group, {"format": "pt"})) for name, group in pairs]


def mirror_shards(tensors: Sequence[TensorSpec], files: Sequence[str]) -> list[Shard]:
    """Shards with the given file names, one per name, holding the tensors in order: `files[i]` is the file of
    `tensors[i]`. For outputs that keep their source's own layout (Mistral's consolidated files)."""
    groups: dict[str, list[TensorSpec]] = {}
    for t, file in zip(tensors, files, strict=True):
        groups.setdefault(file, []).append(t)
    return [Shard(name, group, safetensors_header(group, {"format": "pt"})) for name, group in groups.items()]


def write_index(folder: Path, shards: Sequence[Shard], name: str = SAFETENSORS_INDEX_FILE) -> None:
    """Write the index (`model.safetensors.index.json`) when there is more than one shard, as transformers does."""
    if len(shards) < 2:
        return

    index = {
        "metadata": {
            "total_size": sum(t.nbytes for s in shards for t in s.tensors),
            "total_parameters": sum(math.prod(t.shape) for s in shards for t in s.tensors),
        },
        "weight_map": dict(sorted((t.name, s.filename) for s in shards for t in s.tensors)),
    }
    write_durably(folder / name, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())


def disk_full(folder: Path, needed: int) -> OutputError:
    return OutputError(f"disk full writing {folder}: the output needs {human_bytes(needed)}; free space and run again")


class Aborted(RuntimeError):
    """What a stream raises once aborted (another part of the run failed first, and its error is the one told)."""


class ShardStream:
    """Appends data to the planned shards in order, on a background thread, fsync-ing each full file.

    `write(data, release)` queues a buffer; `release()` is called once its bytes are in the file and hashed,
    so the caller can reuse the buffer. The sha256 of each shard is computed on a third thread, beside the
    writes rather than before them; `on_shard_closed(path, sha256)` is called there once a shard is complete,
    fsync-ed and hashed (an uploader can take it from there). `transient` shards (a scratch folder's, deleted once
    uploaded) are neither fsync-ed nor written back early: they stay in the page cache for the upload to read, and
    need not reach the disk at all. Errors on the threads (disk full) are raised by the next `write` or `close`.
    """

    def __init__(
        self,
        folder: Path,
        shards: Sequence[Shard],
        depth: int = 4,
        on_shard_closed: Callable[[Path, str], None] | None = None,
        transient: bool = False,
    ) -> None:
        self.folder = folder
        self.on_shard_closed = on_shard_closed
        self.transient = transient
        self.shards = list(shards)
        self.total = sum(s.size for s in self.shards)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._hashes: dict[str, Any] = {}
        self._to_hash: queue.Queue = queue.Queue()
        self._hasher = threading.Thread(target=self._hash, name="expo-hasher", daemon=True)
        self._hasher.start()
        self._thread = threading.Thread(target=self._run, name="expo-writer", daemon=True)
        self._thread.start()

    @property
    def checksums(self) -> dict[str, str]:
        """File name -> sha256 of every shard (complete after `close()`)."""
        return {name: digest.hexdigest() for name, digest in self._hashes.items()}

    def write(
        self, data: memoryview, release: Callable[[], None] | None = None, ready: Callable[[], object] | None = None
    ) -> None:
        """Queue bytes; `ready()` is awaited on the writer thread first (a GPU copy), `release()` after."""
        self.check()
        with profiling.stage("wait: writer busy"):
            while True:
                try:
                    self._queue.put((data, release, ready), timeout=0.5)
                    return
                except queue.Full:
                    self.check()

    def close(self) -> None:
        """Wait for every byte to be written, fsync-ed and hashed."""
        self._queue.put(None)
        self._thread.join()
        self._hasher.join()
        self.check()

    def abort(self) -> None:
        """Stop the thread without waiting for pending data (the files are being discarded)."""
        self._error = self._error or Aborted("aborted")
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._hasher.join(timeout=10)

    def check(self) -> None:
        """Raise the writer thread's error, if it had one."""
        if self._error is not None:
            error, self._error = self._error, RuntimeError("writer already failed")
            raise error

    def _hash(self) -> None:
        """Hash what the writer wrote, in order, then give the buffer back."""
        try:
            while (item := self._waiting("wait: nothing written yet", self._to_hash)) is not None:
                pieces, release = item
                for name, view in pieces:
                    if view is None:  # the writer closed this shard: it is complete and durable
                        if self.on_shard_closed is not None:
                            self.on_shard_closed(self.folder / name, self._hashes[name].hexdigest())
                        continue
                    if name not in self._hashes:
                        self._hashes[name] = hashlib.sha256()
                    with profiling.stage("hash"):
                        self._hashes[name].update(view)
                if release is not None:
                    release()
        except BaseException as err:  # handed to the main thread
            self._error = err

    def _run(self) -> None:
        shards = iter(self.shards)
        current: _ShardFile | None = None
        try:
            while True:
                item = self._waiting("wait: no data", self._queue)
                if item is None or self._error is not None:
                    break
                data, release, ready = item
                if ready is not None:
                    ready()
                view = memoryview(data).cast("B")
                pieces = []
                while len(view):
                    if current is None or current.remaining == 0:
                        current = self._advance(current, shards)
                        continue
                    with profiling.stage("write"):
                        n = current.write(view)
                    pieces.append((current.path.name, view[:n]))
                    view = view[n:]
                self._to_hash.put((pieces, release))
                del view, data, pieces
            if self._error is None:
                if current is not None and current.remaining:  # a bug: the plan and the data disagree
                    raise RuntimeError(f"{current.path}: {current.remaining} bytes short")
                while current is not None:  # then shards holding only empty tensors
                    current = self._advance(current, shards)
        except OSError as err:
            self._error = (
                disk_full(self.folder, self.total)
                if err.errno == errno.ENOSPC
                else OutputError(f"cannot write {current.path if current else self.folder}: {err.strerror or err}")
            )
        except BaseException as err:  # handed to the main thread
            self._error = err
        finally:
            self._to_hash.put(None)
            if current is not None:
                current.close(durable=False)

    @staticmethod
    def _waiting(stage: str, source: queue.Queue) -> Any:
        with profiling.stage(stage):
            return source.get()

    def _advance(self, current: _ShardFile | None, shards: Iterator[Shard]) -> _ShardFile | None:
        """Close (fsync) the finished file and open the next planned one, header written."""
        if current is not None:
            with profiling.stage("fsync"):
                current.close(durable=not self.transient)
            self._to_hash.put(([(current.path.name, None)], None))
        shard = next(shards, None)
        if shard is None:
            return None
        opened = _ShardFile(self.folder / shard.filename, shard, write_back=not self.transient)
        self._to_hash.put(([(shard.filename, opened.head)], None))
        return opened


class _ShardFile:
    """One output file being filled; asks the kernel to start writing back every FLUSH_EVERY bytes, so that
    the disk works while we compute and the final fsync has little left to wait for."""

    FLUSH_EVERY = 64 * 1024 * 1024

    def __init__(self, path: Path, shard: Shard, write_back: bool = True) -> None:
        self.path = path
        self.write_back = write_back
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.position = self.flushed = 0
        self.head = len(shard.header).to_bytes(8, "little") + shard.header
        self._write_all(memoryview(self.head))
        self.remaining = shard.size - self.position

    def _write_all(self, view: memoryview) -> None:
        while len(view):
            n = os.write(self.fd, view)
            view, self.position = view[n:], self.position + n
        if self.write_back and self.position - self.flushed >= self.FLUSH_EVERY and hasattr(os, "posix_fadvise"):
            # DONTNEED starts asynchronous writeback of the range and keeps no clean pages we never read again.
            os.posix_fadvise(self.fd, self.flushed, self.position - self.flushed, os.POSIX_FADV_DONTNEED)
            self.flushed = self.position

    def write(self, view: memoryview) -> int:
        """Write as much of `view` as this file still takes; return how many bytes that was."""
        n = min(self.remaining, len(view))
        self._write_all(view[:n])
        self.remaining -= n
        return n

    def close(self, durable: bool) -> None:
        if self.fd < 0:
            return
        try:
            if durable:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1
