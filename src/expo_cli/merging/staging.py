"""The output folder while it is built: a temporary folder beside the target, renamed into place last.

A run writes into `.expo-partial-<name>-<pid>-<random>` next to the target. Only when every file is written
and fsync-ed is it renamed to the target, so a killed run never leaves something that looks finished, and
the next run finds and removes what a dead run left (its owner record says whether the run still lives).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path

from ..constants import PARTIAL_PREFIX
from ..errors import OutputError
from ..fsutil import exchange, fsync_path

HEARTBEAT_SECONDS = 60  # how often a run touches its owner record


STALE_AFTER_SECONDS = 10 * HEARTBEAT_SECONDS  # a record not touched for this long belongs to a dead run


def stale_partials(output: Path) -> list[Path]:
    """Temporary folders that earlier runs for this output left behind and whose process is gone.

    Each run records beside its folder who owns it (`<folder>.owner`: host and pid) and touches that record
    every HEARTBEAT_SECONDS. On the same host a folder is stale when its process is gone; a folder of another
    host (a shared file system, a job array) only when its record has not been touched for STALE_AFTER_SECONDS,
    since another host's pids mean nothing here. A folder whose record is missing or unreadable (a run killed
    while writing it) is judged by the pid in its name.
    """
    parent = Path(os.path.abspath(output)).parent
    if not parent.is_dir():
        return []
    found = []
    for candidate in parent.glob(f"{PARTIAL_PREFIX}{output.name}-*"):
        if candidate.is_dir() and not _owner_alive(candidate, output.name):
            found.append(candidate)
    return found


def remove_partial(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    Path(f"{folder}.owner").unlink(missing_ok=True)


def _owner_alive(folder: Path, name: str) -> bool:
    record = Path(f"{folder}.owner")
    try:
        owner = json.loads(record.read_text())
        host, pid, touched = owner["host"], int(owner["pid"]), record.stat().st_mtime
    except (OSError, ValueError, KeyError, TypeError):  # no readable record: judged by the pid in the name
        pid_text = folder.name[len(f"{PARTIAL_PREFIX}{name}-") :].split("-")[0]
        return pid_text.isdigit() and _alive(int(pid_text))
    if host == socket.gethostname():
        return _alive(pid)
    return time.time() - touched < STALE_AFTER_SECONDS


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(staged: Path, output: Path, force: bool) -> None:
    """Make a finished folder durable and put it at `output`, the very last step of a run.

    An existing output (`--force`) is swapped with the new one in one atomic step where the system can
    (Linux's renameat2 RENAME_EXCHANGE), so there is never a moment without an output, then removed.
    Elsewhere it is renamed aside first: a crash between the two renames leaves it as `<staged>-old`.
    """
    fsync_path(staged)
    trash: Path | None = None
    if output.exists():
        if not force and (output.is_file() or any(output.iterdir())):
            raise OutputError(f"--output {output} appeared during the run; pass --force to replace it")
        if exchange(staged, output):
            trash = staged  # now holding the previous output
        else:
            trash = staged.parent / f"{staged.name}-old"
            os.rename(output, trash)
            os.rename(staged, output)
    else:
        os.rename(staged, output)
    fsync_path(output.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


class Staging:
    """A temporary folder beside `output`, removed unless `commit()` renames it into place.

    Its owner record (`<folder>.owner`, beside it so that it never becomes part of the output) says which host
    and process own it, and is touched every HEARTBEAT_SECONDS while the run lives: see `stale_partials`.
    """

    def __init__(self, output: Path) -> None:
        self.output = Path(os.path.abspath(output))
        self.output.parent.mkdir(parents=True, exist_ok=True)
        name = f"{PARTIAL_PREFIX}{self.output.name}-{os.getpid()}-{secrets.token_hex(4)}"
        self.path = self.output.parent / name
        self.owner = Path(f"{self.path}.owner")
        self.owner.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        self.path.mkdir()
        self.committed = False
        self._stop = threading.Event()
        threading.Thread(target=self._heartbeat, name="expo-heartbeat", daemon=True).start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.owner)
            except OSError:
                return

    def commit(self, force: bool) -> None:
        """Make the staged folder durable and put it at the target: the very last step of a run.

        An existing output (`--force`) is swapped with the new one in one atomic step where the system can
        (Linux's renameat2 RENAME_EXCHANGE), so there is never a moment without an output, then removed.
        Elsewhere it is renamed aside first: a crash between the two renames leaves it as `<partial>-old`.
        """
        publish(self.path, self.output, force)
        self.committed = True
        self._release()

    def _release(self) -> None:
        self._stop.set()
        self.owner.unlink(missing_ok=True)

    def discard(self) -> None:
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)
            self._release()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()
