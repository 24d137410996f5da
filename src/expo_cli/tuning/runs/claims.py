"""Who is evaluating which candidate of a run folder, safe across processes and hosts on a shared file system.

A claim on a candidate (or on finishing the run) is a numbered file, `claims/<name>/<n>.json`, made by an exclusive
create (atomic on local disks and on NFS, unlike `flock`): the highest number is the holder. Its holder refreshes
the file's modification time every `HEARTBEAT` seconds while it works. Another process takes a claim over by
creating the next number, which only one taker can do, and only from a holder that is dead: on the same host (and
PID namespace) a process that no longer runs, anywhere else a heartbeat older than `STALE` seconds. A holder whose
claim was taken over (its heartbeat was late: a stalled or partitioned host) learns it before its next write and
stops (`LostClaim`). A claim is removed when its work is done or fails; one left by a killed process is taken over
by the process run again.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import UsageError

FOLDER = "claims"
HEARTBEAT = 20.0  # seconds between a holder's refreshes
STALE = 300.0  # seconds without a refresh after which a holder on another host counts as dead (NFS caches ~60 s)


class Busy(Exception):
    """The claim is held by another live process."""

    def __init__(self, name: str, holder: Holder) -> None:
        super().__init__(f"{name} is being evaluated by {holder.describe()}")
        self.name, self.holder = name, holder


class LostClaim(UsageError):
    """This process's claim was taken over: another process does its work now."""


@dataclass(frozen=True)
class Holder:
    """Who holds a claim, and when its file was last refreshed."""

    host: str
    namespace: str  # the PID namespace: the same host name in two containers is two hosts
    pid: int
    started: float  # the process's start, to tell a reused PID
    token: str
    heartbeat: float  # the claim file's modification time

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), _namespace(), os.getpid(), _process_start(os.getpid()), uuid.uuid4().hex, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "namespace": self.namespace, "pid": self.pid, "started": self.started,
                "token": self.token}  # fmt: skip

    def describe(self, now: float | None = None) -> str:
        age = (now if now is not None else time.time()) - self.heartbeat
        return f"host {self.host} pid {self.pid} (heartbeat {max(age, 0):.0f} s ago)"

    def alive(self, now: float) -> bool:
        """Whether this holder may still be working: on this host, its process runs; elsewhere, it beat lately."""
        me = Holder.me()
        if (self.host, self.namespace) == (me.host, me.namespace):
            return self.pid == me.pid or _process_start(self.pid) == self.started
        return now - self.heartbeat < STALE


@dataclass
class Claim:
    name: str
    file: Path
    token: str

    def held(self) -> bool:
        """Whether this claim is still the newest of its name (no other process took it over)."""
        newest = _newest(self.file.parent)
        return newest is not None and newest[0] == self.file

    def beat(self) -> None:
        try:
            os.utime(self.file)
        except FileNotFoundError:
            pass  # released, or taken over and the folder cleaned: `held` says which


class Claims:
    """This process's claims in one run folder, with the heartbeat that keeps them alive."""

    def __init__(self, root: Path, heartbeat: float = HEARTBEAT) -> None:
        self.root = root / FOLDER
        self.me = Holder.me()
        self.held: dict[str, Claim] = {}
        self.interval = heartbeat
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def take(self, name: str) -> Claim:
        """Claim `name` for this process (again, when it already holds it); `Busy` when a live process holds it."""
        if name in self.held:
            return self.held[name]
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # lost races only: each loss means another process made progress
            newest = _newest(folder)
            number = 0
            if newest is not None:
                file, holder = newest
                if holder is not None and holder.alive(time.time()):
                    raise Busy(name, holder)
                if holder is None and time.time() - _mtime(file) < STALE:  # being written this instant
                    time.sleep(0.05)
                    continue
                number = int(file.stem) + 1
            file = folder / f"{number:06d}.json"
            try:
                fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                continue  # another process took it first: look again
            with os.fdopen(fd, "w") as fh:
                json.dump(self.me.to_json(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            for older in folder.glob("*.json"):  # the dead holders' files, no longer needed
                if older != file and older.stem < file.stem:
                    older.unlink(missing_ok=True)
            claim = Claim(name, file, self.me.token)
            with self._lock:
                self.held[name] = claim
            self._start()
            return claim
        raise UsageError(f"--run-dir: cannot claim {name}: other processes keep taking it; try again")

    def release(self, name: str) -> None:
        with self._lock:
            claim = self.held.pop(name, None)
        if claim is not None and claim.held():
            claim.file.unlink(missing_ok=True)

    def check(self, name: str) -> None:
        """Before writing for `name`: stop if another process took this claim over."""
        claim = self.held.get(name)
        if claim is not None and not claim.held():
            newest = _newest(claim.file.parent)
            who = newest[1].describe() if newest and newest[1] else "another process"
            raise LostClaim(
                f"{name}: taken over by {who} while this process's heartbeat was late (more than {STALE:.0f} s); "
                "this process stops and leaves the work to it"
            )

    def close(self) -> None:
        """Release every claim and stop the heartbeat."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for name in list(self.held):
            self.release(name)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="expo-claims-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                claims = list(self.held.values())
            for claim in claims:
                claim.beat()


def holders(root: Path) -> dict[str, Holder]:
    """Every claim in a run folder and its newest holder (for `--status`)."""
    found = {}
    for folder in sorted({p.parent for p in (root / FOLDER).rglob("*.json")}):
        newest = _newest(folder)
        if newest is not None and newest[1] is not None:
            found[folder.relative_to(root / FOLDER).as_posix()] = newest[1]
    return found


def _newest(folder: Path) -> tuple[Path, Holder | None] | None:
    """The newest claim file of a folder and its holder (None while it is being written, or unreadable)."""
    files = sorted((f for f in folder.glob("*.json") if f.stem.isdigit()), key=lambda f: int(f.stem))
    if not files:
        return None
    file = files[-1]
    try:
        data = json.loads(file.read_text())
        holder = Holder(
            str(data["host"]), str(data["namespace"]), int(data["pid"]), float(data["started"]), str(data["token"]),
            _mtime(file),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return file, None
    return file, holder


def _mtime(file: Path) -> float:
    try:
        return file.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_start(pid: int) -> float:
    """When process `pid` started (clock ticks since boot; -1 when it does not run): a PID reused by another
    process has another start."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return float(fields[19])
    except (OSError, IndexError, ValueError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return -1.0
        except PermissionError:
            pass
        return 0.0
