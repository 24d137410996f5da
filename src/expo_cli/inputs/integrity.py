"""Every byte read from the Hub checked against the hash the Hub lists for its file, before anything made from it
is published.

Downloaded weights (`check_snapshot`): huggingface_hub checks a download's size, not its bytes. Its cache names an
LFS file's blob by the sha256 the Hub gave for it, so each weight file of a snapshot is hashed once and compared
with that name and with the sha256 the Hub lists at the validated commit; a marker in expo's cache, kept with the
blob's size, time and inode, spares the next run the hashing while the blob is unchanged.

The Hub names each file by a hash: an LFS file (every weight shard) by its sha256, a file kept in git (config.json,
an index) by its git blob id. A small file is checked whole as it arrives. A weight shard read by ranges (`--stream`)
is hashed as its blocks are used, in file order; a block used out of that order (two inputs sharded differently, two
shard streams sharing an input file) is remembered by its own sha256, and `FileDigest.finish` reads again the bytes
the walk skipped or took out of order, checking each re-read block against what was used, so the file's hash
covers exactly the bytes the merge computed from. A mismatch is a HubError naming the file: nothing is committed.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import HubError
from ..fsutil import available_cores, cache_root, write_json_atomically

CHUNK_BYTES = 16 * 2**20  # what `finish` and `check_snapshot` read at a time
SHA256 = re.compile(r"[0-9a-f]{64}")


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


def check_snapshot(folder: Path, names: Sequence[str], listed: dict[str, Listed] | None = None) -> None:
    """The weight files `names` of a huggingface_hub cache snapshot hold the bytes the Hub named them by: the sha256
    their blob is named after, and the one `listed` (when known). A HubError naming the first that does not."""
    from huggingface_hub.utils import tqdm  # the Hub client loads when the Hub is used: its bars obey --quiet

    todo = []
    for name in names:
        blob = (folder / name).resolve()
        expected = listed[name].sha256 if listed and name in listed and listed[name].sha256 else None
        if SHA256.fullmatch(blob.name) and expected not in (None, blob.name):
            raise HubError(
                f"{folder / name}: the cached file is not the one the Hub lists ({expected[:12]}…); run again"
            )
        expected = expected or (blob.name if SHA256.fullmatch(blob.name) else None)
        if expected is not None and not _checked(blob, expected):
            todo.append((name, blob, expected))
    if not todo:
        return
    total = sum(blob.stat().st_size for _, blob, _ in todo)
    with tqdm(total=total, unit="B", unit_scale=True, desc="Checking sha256") as bar:

        def check(item: tuple[str, Path, str]) -> None:
            name, blob, expected = item
            hasher = hashlib.sha256()
            with open(blob, "rb") as fh:
                while chunk := fh.read(CHUNK_BYTES):
                    hasher.update(chunk)  # releases the interpreter lock: files hash side by side
                    bar.update(len(chunk))
            if hasher.hexdigest() != expected:
                raise HubError(
                    f"{folder / name}: the downloaded bytes do not match the sha256 the Hub lists ({expected[:12]}…); "
                    f"delete {blob} and run again"
                )
            _remember(blob, expected)

        with ThreadPoolExecutor(min(len(todo), available_cores())) as pool:
            list(pool.map(check, todo))


def _marker(expected: str) -> Path:
    return cache_root() / "checked" / expected


def _stamp(blob: Path) -> list[int]:
    found = blob.stat()
    return [found.st_size, found.st_mtime_ns, found.st_ino]


def _checked(blob: Path, expected: str) -> bool:
    """Whether this blob, as it is now, was hashed before and matched."""
    try:
        return json.loads(_marker(expected).read_text()) == {"blob": str(blob), "stamp": _stamp(blob)}
    except (OSError, ValueError):
        return False


def _remember(blob: Path, expected: str) -> None:
    try:
        _marker(expected).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(_marker(expected), {"blob": str(blob), "stamp": _stamp(blob)})
    except OSError:  # a cache that cannot be written only costs hashing again next time
        pass
