"""Every byte read from the Hub checked against the hash the Hub lists for its file, before anything made from it
is published.

The Hub names each file by a hash: an LFS file (every weight shard) by its sha256, a file kept in git (config.json,
an index) by its git blob id. A small file is checked whole as it arrives. A weight shard read by ranges (`--stream`)
is hashed as its blocks are used, in file order; a block used out of that order (two inputs sharded differently, two
shard streams sharing an input file) is remembered by its own sha256, and `FileDigest.finish` reads again the bytes
the walk skipped or took out of order, checking each re-read block against what was used, so the file's hash
covers exactly the bytes the merge computed from. A mismatch is a HubError naming the file: nothing is committed.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import HubError

CHUNK_BYTES = 16 * 2**20  # what `finish` reads at a time


@dataclass(frozen=True)
class Listed:
    """What the Hub lists for one file at the validated commit."""

    size: int
    sha256: str | None  # an LFS file's
    blob_id: str | None  # its git blob id (for an LFS file, the pointer's)

    def hasher(self) -> hashlib._Hash:
        """A hash object that ends in this file's listed hash once fed all its bytes."""
        if self.sha256:
            return hashlib.sha256()
        return hashlib.sha1(b"blob %d\0" % self.size)

    @property
    def expected(self) -> str:
        return self.sha256 or self.blob_id or ""


def check_whole(label: str, data: bytes, listed: Listed) -> None:
    """A whole small file as the Hub lists it (size and hash), else a HubError naming it."""
    if not listed.expected:
        raise HubError(f"{label}: the Hub lists no hash for it, so what is read cannot be checked; refusing it")
    hasher = listed.hasher()
    hasher.update(data)
    if len(data) != listed.size or hasher.hexdigest() != listed.expected:
        raise _mismatch(label, listed)


def _mismatch(label: str, listed: Listed) -> HubError:
    kind = "sha256" if listed.sha256 else "git blob id"
    return HubError(
        f"{label}: the bytes read do not match the {kind} the Hub lists ({listed.expected[:12]}…): changed on the "
        "way (a proxy, a plain-HTTP hop?); nothing was published: run again, or without --stream"
    )


class FileDigest:
    """The hash of one remote file, fed the blocks the merge uses, in whatever order it uses them."""

    def __init__(self, label: str, listed: Listed) -> None:
        if not listed.expected:
            raise HubError(f"{label}: the Hub lists no hash for it, so what is read cannot be checked; refusing it")
        self.label, self.listed = label, listed
        self.cursor = 0  # bytes [0, cursor) are in the hash
        self._hasher = listed.hasher()
        self._used: dict[tuple[int, int], bytes] = {}  # blocks used out of order -> their sha256
        self._hashed: dict[tuple[int, int], bytes] = {}  # blocks hashed in order -> their sha256
        self._lock = threading.Lock()

    def feed(self, begin: int, data: memoryview | bytes) -> None:
        """A block the merge uses: hashed now when it continues the file, remembered otherwise."""
        end = begin + len(data)
        digest = hashlib.sha256(data).digest()
        with self._lock:
            if begin <= self.cursor < end:
                for block in [b for b in self._used if begin <= b[0] and b[1] <= end]:  # used earlier: same bytes?
                    if self._used.pop(block) != hashlib.sha256(data[block[0] - begin : block[1] - begin]).digest():
                        raise self._inconsistent(block)
                self._hasher.update(data[self.cursor - begin :])
                self.cursor = end
                self._hashed[(begin, end)] = digest
            elif end <= self.cursor and self._hashed.get((begin, end), digest) != digest:
                raise self._inconsistent((begin, end))
            elif end > self.cursor or (begin, end) not in self._hashed:
                self._used.setdefault((begin, end), digest)

    def finish(self, read: Callable[[int, int], memoryview]) -> None:
        """Hash the rest of the file, reading again (`read(begin, end)`) what was skipped or used out of order and
        checking each such block against the bytes used; then compare with the listed hash."""
        size = self.listed.size
        while self.cursor < size:
            covering = [b for b in self._used if b[0] <= self.cursor < b[1]]
            if covering:
                block = max(covering, key=lambda b: b[1])
                self._check(block, data := read(*block))
                self._hasher.update(data[self.cursor - block[0] :])
                self.cursor = block[1]
                continue
            following = min((b[0] for b in self._used if b[0] > self.cursor), default=size)
            stop = min(following, size, self.cursor + CHUNK_BYTES)
            self._hasher.update(read(self.cursor, stop))
            self.cursor = stop
        for block in list(self._used):  # used after the hash had passed them: compared with a fresh read
            self._check(block, read(*block))
        if self._hasher.hexdigest() != self.listed.expected:
            raise _mismatch(self.label, self.listed)

    def _check(self, block: tuple[int, int], data: memoryview) -> None:
        if self._used.pop(block) != hashlib.sha256(data).digest():
            raise self._inconsistent(block)

    def _inconsistent(self, block: tuple[int, int]) -> HubError:
        return HubError(
            f"{self.label}, bytes {block[0]}-{block[1] - 1}: the server sent different bytes for the same range; "
            "nothing was published: run again, or without --stream"
        )
