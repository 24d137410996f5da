"""A tune's work kept on disk as it is made, so that a killed run resumes where it stopped.

Layout of a run folder:

    run.json                                  what the responses depend on (the key), written first
    generations/<part>/alpha=<α>.jsonl        one line per generated batch: its α, part, number and responses
    rewards/<reward digest>/reward.json       which reward judged them
    rewards/<reward digest>/<part>/alpha=<α>.jsonl    one line per scored batch: its α, part, number and rewards
    looks.jsonl                               every confirmation test made on the held-out prompts (`looks`)
    guard/<guard digest>/                     --guard: its task's answers and scores, laid out as above
    plan.json                                 the grid every process of a split run evaluates (`agree`)
    claims/<part>/alpha=<α>/<n>.json          which process is evaluating a candidate (`claims`)
    finished.json                             written once a split run is finished

<α> is the exact value (`repr`, which round-trips: 0.1234561 and 0.1234564 never share a file), and every line
says which α and part it belongs to, checked when read. Each line is appended and fsynced as soon as its batch is
done; a line cut short by a crash is left out when read (and cut off by the next append, its writer); a complete line
that is not what expo wrote is an error that names it and suggests --fresh.

Responses depend only on the key (both inputs, per-tensor α rules, dtype, device, prompts, split and decoding
settings): a folder made with another key is refused, never mixed. Rewards are kept per reward, so another reward
model or function re-judges the same responses (`--rescore`).

Several processes may share a folder (job-array parts, workers; on several hosts): each writes a candidate's
files only while it holds that candidate's claim. A run in one process also locks the whole folder (`flock`,
exclusive; the processes of a split run share it), which keeps a second run of either kind away on file systems
where `flock` works; where it does not (some NFS mounts), the claims alone keep them apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ...errors import OutputError, UsageError, first_line
from ...fsutil import cache_root, create_once, fsync_path, temporary_prefix, write_json_atomically
from ...lines import json_lines
from ..backends.generation import Response
from ..objectives.rewards import BatchScores
from .claims import Claims

T = TypeVar("T")
MARKER = "run.json"
LOCK = "run.lock"
HELD_OUT = ("prompts", "split")  # the key's fields that say which prompts are held out
LOOKS = "looks.jsonl"  # kept by --fresh while the prompts and their split stay: they are the same held-out prompts
PLAN = "plan.json"
FINISHED = "finished.json"


def digest(value: Any) -> str:
    """A short, stable fingerprint of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def default_location(key: dict[str, Any]) -> Path:
    """The cache folder for runs with this key, in expo's cache (`fsutil.cache_root`)."""
    return cache_root() / "tune" / digest(key)


class RunFolder:
    def __init__(
        self, path: Path, reward: dict[str, Any], lock: int, claims: Claims | None = None, root: Path | None = None
    ) -> None:
        self.path = path
        self.lock = lock  # held until `close`
        self.claims = claims if claims is not None else Claims(path)
        self.root = root or path  # where its generations and rewards are: a guard's are in a folder of their own
        self.reward_folder = self.root / "rewards" / digest(reward)
        self.reward_folder.mkdir(parents=True, exist_ok=True)
        if not (self.reward_folder / "reward.json").exists():
            write_json_atomically(self.reward_folder / "reward.json", reward)

    @classmethod
    def open(
        cls, path: Path, key: dict[str, Any], reward: dict[str, Any], fresh: bool = False, shared: bool = False
    ) -> RunFolder:
        """The run folder at `path` for `key`, locked for this process (`shared`: with the other processes of a
        split run): created, resumed, or (`fresh`) emptied first. A folder made with another key is refused with
        the settings that differ."""
        if path.exists() and not _run_folder_or_starting(path):
            raise UsageError(f"--run-dir {path.name}: exists and is not an expo tune run folder; name another")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"--run-dir {path.name}: cannot create it ({err.strerror})") from err
        lock = _lock(path, shared)
        try:
            cls._prepare(path, key, fresh)
        except BaseException:
            os.close(lock)
            raise
        return cls(path, reward, lock)

    @staticmethod
    def _prepare(path: Path, key: dict[str, Any], fresh: bool) -> None:
        marker = path / MARKER
        if fresh and marker.is_file():
            try:
                saved = json.loads(marker.read_text())["key"]
            except (OSError, ValueError, KeyError, TypeError):
                saved = None
            same_prompts = isinstance(saved, dict) and all(saved.get(k) == key.get(k) for k in HELD_OUT)
            kept = {LOCK, LOOKS} if same_prompts else {LOCK}
            for entry in sorted(path.iterdir(), key=lambda entry: entry.name == MARKER):  # the marker last
                if entry.name not in kept:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        try:
            create_once(marker, _json_bytes({"key": key}))  # of parts starting at once, one writes it
            saved = json.loads(marker.read_text())["key"]
        except OSError as err:
            raise OutputError(f"--run-dir {path.name}: cannot write it ({err.strerror})") from err
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"--run-dir {path.name}: its {MARKER} is unreadable; pass --fresh") from err
        if saved != key:
            changed = ", ".join(_differences(saved, key)) or "the settings"
            raise UsageError(
                f"--run-dir {path.name}: holds a run with other settings ({changed}); pass --fresh to start it "
                "again, or another --run-dir"
            )

    def describe(self) -> str:
        """One line for the start of a run: where its work is kept, and whether an earlier run's is reused."""
        kept = sum(
            data.count(b"\n") for data in (f.read_bytes() for f in (self.path / "generations").glob("*/*.jsonl"))
        )
        if not kept:
            return f"run folder: {self.path} (new)"
        return f"run folder: {self.path} (resuming: {kept} batch(es) of responses kept from an earlier run are reused)"

    def scored_by(self, reward: dict[str, Any]) -> RunFolder:
        """The same folder (its lock and claims held by this one) keeping the scores of another reward
        (--confirm-reward)."""
        return RunFolder(self.path, reward, lock=-1, claims=self.claims, root=self.root)

    def guarded_by(self, guard: dict[str, Any]) -> RunFolder:
        """The same folder keeping a --guard task's answers and scores apart from the objective's."""
        return RunFolder(self.path, guard, lock=-1, claims=self.claims, root=self.path / "guard" / digest(guard))

    def agree(self, plan: dict[str, Any]) -> None:
        """Every process of a split run must evaluate the same grid: the first records it, the others compare."""
        text = _json_bytes(plan)
        target = self.path / PLAN
        if not create_once(target, text) and target.read_bytes() != text:  # created whole, by exactly one process
            saved = json.loads(target.read_text())
            changed = ", ".join(_differences(saved, plan)) or "the grid"
            raise UsageError(
                f"--run-dir {self.path.name}: another process of this run evaluates another grid ({changed}); "
                "every part must run the same command (or pass another --run-dir)"
            )

    def plan(self) -> dict[str, Any] | None:
        """The grid of a split run (None for a run in one process)."""
        try:
            return json.loads((self.path / PLAN).read_text())
        except (OSError, ValueError):
            return None

    def finished(self) -> bool:
        """Whether a split run was finished (its result computed) in this folder."""
        return (self.path / FINISHED).is_file()

    def mark_finished(self) -> None:
        write_json_atomically(self.path / FINISHED, {"finished": True})

    def close(self) -> None:
        """Let another run use the folder."""
        if self.lock >= 0:
            self.claims.close()
            os.close(self.lock)
            self.lock = -1

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generations(self, part: str, alpha: float) -> dict[int, list[Response]]:
        """The batches generated so far: batch number -> responses."""
        file = self._file(self.root / "generations", part, alpha)
        return dict(
            self._records(file, part, alpha, lambda line: (line["batch"], [Response(*r) for r in line["responses"]]))
        )

    def add_generation(self, part: str, alpha: float, number: int, responses: list[Response]) -> None:
        rows = [[r.prompt, r.sample, r.text, r.tokens, r.finish] for r in responses]
        record = {"alpha": alpha, "part": part, "batch": number, "responses": rows}
        _append(self._file(self.root / "generations", part, alpha), record)

    def rewards(self, part: str, alpha: float) -> dict[int, BatchScores]:
        """The batches scored so far by this folder's reward: batch number -> its scores."""
        file = self._file(self.reward_folder, part, alpha)

        def parse(line: dict[str, Any]) -> tuple[int, BatchScores]:
            return line["batch"], BatchScores(line["rewards"], set(line["cut"]), set(line["response_cut"]))

        return dict(self._records(file, part, alpha, parse))

    def add_rewards(self, part: str, alpha: float, number: int, scores: BatchScores) -> None:
        record = {
            "alpha": alpha,
            "part": part,
            "batch": number,
            "rewards": scores.rewards,
            "cut": sorted(scores.prompt_cut),
            "response_cut": sorted(scores.response_cut),
        }
        _append(self._file(self.reward_folder, part, alpha), record)

    def looks(self) -> list[dict[str, Any]]:
        """The confirmation tests made on this folder's held-out prompts (`looks`), oldest first."""
        where = f"--run-dir {self.path.name}: {LOOKS}"
        records = [line for _, line in read_lines(self.path / LOOKS, where)]
        if not all(isinstance(r, dict) and isinstance(r.get("look"), int) for r in records):
            raise UsageError(f"{where}: not a record of looks; the folder was changed: pass --fresh")
        return records

    def add_look(self, record: dict[str, Any]) -> None:
        _append(self.path / LOOKS, record)

    @staticmethod
    def _file(root: Path, part: str, alpha: float) -> Path:
        return root / part / f"alpha={alpha!r}.jsonl"

    def _records(self, file: Path, part: str, alpha: float, parse: Callable[[dict[str, Any]], T]) -> list[T]:
        """Each complete line of a per-α file, checked to belong to this α and part, through `parse`."""
        where = f"--run-dir {self.path.name}: {file.relative_to(self.path).as_posix()}"
        records = []
        for number, line in read_lines(file, where):
            if not isinstance(line, dict) or line.get("alpha") != alpha or line.get("part") != part:
                raise UsageError(
                    f"{where} line {number}: not a record of α={alpha!r} ({part}); the folder was changed or mixed: "
                    "pass --fresh to start the run again"
                )
            try:
                records.append(parse(line))
            except (KeyError, TypeError, ValueError) as err:
                raise UsageError(f"{where} line {number}: incomplete ({first_line(err)}); pass --fresh") from err
        return records


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def _run_folder_or_starting(path: Path) -> bool:
    """Whether `path` holds a run, or what another process starting one there this instant has made so far
    (the lock, the marker's temporary file): job-array parts start at once on an empty folder. The entries are
    listed before the marker is looked for: the marker is made before anything else, so any other entry listed
    implies it is there."""
    starting = temporary_prefix(MARKER)
    entries = [entry.name for entry in path.iterdir()]
    return all(name == LOCK or name.startswith(starting) for name in entries) or (path / MARKER).is_file()


def _lock(path: Path, shared: bool) -> int:
    """A lock on the folder for this process's life, exclusive (or `shared` by a split run's processes): two tunes
    appending to one folder would interleave their batches. Where the file system has no `flock` (some NFS
    mounts), the folder is used unlocked: the claims keep processes apart."""
    import fcntl

    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError as err:
        os.close(fd)
        raise UsageError(f"--run-dir {path.name}: another expo tune is using it; wait for it or name another") from err
    except OSError:
        pass  # no locks here (ENOLCK, EOPNOTSUPP): the claims alone
    return fd


def read_lines(path: Path, where: str) -> list[tuple[int, Any]]:
    """The complete lines of a JSON-lines file, numbered; a last line cut short (by a crash, or being written by
    another process this instant) is left out, and left alone: only its writer repairs it (`_append`). A complete
    line that is not JSON is a UsageError naming it (`where`)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1

    def corrupt(number: int, why: str) -> UsageError:
        return UsageError(f"{where} line {number}: not valid JSON ({why}); pass --fresh to start the run again")

    try:
        text = data[:end].decode("utf-8")
    except UnicodeDecodeError as err:
        raise corrupt(_line_of(data, err.start), "not UTF-8") from err
    return json_lines(text, corrupt)


def _line_of(data: bytes, offset: int) -> int:
    """The line number (from 1) of a byte offset."""
    return data.count(b"\n", 0, offset) + 1


def _append(path: Path, record: dict[str, Any]) -> None:
    """One line, durable before this returns, on a line of its own: a last line a crash cut short is cut off
    first (by the file's one writer, the process holding its candidate's claim)."""
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        if fh.seek(0, os.SEEK_END) and (fh.seek(-1, os.SEEK_END), fh.read(1))[1] != b"\n":
            fh.seek(0)
            fh.truncate(fh.read().rfind(b"\n") + 1)
        fh.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())
    if new:
        fsync_path(path.parent)


def _differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """The dotted names of the settings that differ between two keys."""
    if isinstance(saved, dict) and isinstance(now, dict):
        found = []
        for name in sorted(set(saved) | set(now)):
            found += _differences(saved.get(name), now.get(name), f"{prefix}{name}.")
        return found
    if saved == now:
        return []
    name = prefix.rstrip(".")
    if isinstance(saved, (str, int, float, bool)) and isinstance(now, (str, int, float, bool)):
        return [f"{name}: {saved} → {now}"]
    return [name]
