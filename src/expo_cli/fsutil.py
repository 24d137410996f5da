"""The output folder: checked before any work, built in a temporary folder beside it, renamed into place last.

A run writes into `.expo-partial-<name>-<pid>-<random>` next to the target. Only when every file is written
and fsync-ed is it renamed to the target, so a killed run never leaves something that looks finished, and
the next run finds and removes what a dead run left.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

from .constants import PARTIAL_PREFIX
from .errors import InputError, OutputError

HEADROOM = 1024 * 1024  # config.json, the model card and folder entries, beyond what is counted


MAX_SIDE_FILE_BYTES = 2**30  # a file copied or uploaded beside the weights (tokenizers reach ~100 MB)


def folder_files(folder: Path, ignored: Iterable[str] = ()) -> list[str]:
    """Every file below a folder as a sorted relative POSIX path, folders named in `ignored` left out.

    Links to folders are not entered (a link can make a tree endless, or reach anywhere); links to files are
    listed, and `contained_file` decides whether they may be read.
    """
    ignored = set(ignored)
    found = []
    for root, folders, files in os.walk(folder, followlinks=False):
        folders[:] = [f for f in folders if f not in ignored and not os.path.islink(os.path.join(root, f))]
        base = Path(root).relative_to(folder)
        found += [(base / name).as_posix() for name in files]
    return sorted(found)


def contained_file(folder: Path, relative: str, limit: int | None = MAX_SIDE_FILE_BYTES) -> Path:
    """The regular file `relative` names inside `folder`, refusing what would read or publish something else.

    A link is followed only when its target is inside the folder, or, for a huggingface_hub cache snapshot
    (`.../snapshots/<commit>/`), inside the repo's own `blobs/` folder: a `LICENSE -> ~/.cache/huggingface/token`
    planted in a cloned folder is refused, not copied into the output or pushed. Devices, pipes and files larger
    than `limit` bytes are refused too.

    Raises:
        InputError: naming the file and what to do.
    """
    path = folder / relative
    target = path.resolve()
    roots = [folder.resolve()]
    if folder.resolve().parent.name == "snapshots":
        roots.append(folder.resolve().parent.parent / "blobs")
    if not any(target.is_relative_to(root) for root in roots):
        raise InputError(
            f"{path}: a link to a file outside the folder; refusing to copy or publish it: replace the link with "
            "the file itself, or leave it out (--skip)"
        )
    try:
        found = target.stat()
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror}); fix or remove it") from err
    if not stat.S_ISREG(found.st_mode):
        raise InputError(f"{path}: not a regular file; remove it or leave it out (--skip)")
    if limit is not None and found.st_size > limit:
        raise too_large(str(path), found.st_size, limit)
    return target


def too_large(label: str, size: int, limit: int = MAX_SIDE_FILE_BYTES) -> InputError:
    return InputError(
        f"{label}: {human_bytes(size)}, more than the {human_bytes(limit)} a file beside the weights may be; "
        "leave it out (--skip)"
    )


def cache_root() -> Path:
    """expo's own cache: `$EXPO_CACHE`, else `$XDG_CACHE_HOME/expo`, else ~/.cache/expo."""
    root = os.environ.get("EXPO_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "expo"
    return Path(root)


def human_bytes(n: float) -> str:
    """Decimal units, like huggingface_hub's sizes: 5.00 GB is 5e9 bytes."""
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if abs(n) < 1000:
            return f"{n:.2f} {unit}"
    return f"{n / 1000:.2f} TB"


def write_durably(path: Path, data: bytes) -> None:
    """Write a small file and fsync it."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_atomically(path: Path, data: bytes) -> None:
    """Write a file through a temporary name beside it, so that `path` is never seen half-written. The name is
    unique across processes and hosts (a folder on shared storage may be written from several)."""
    temporary = _temporary_beside(path)
    try:
        write_durably(temporary, data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_path(path.parent if str(path.parent) else Path("."))


def create_once(path: Path, data: bytes) -> bool:
    """Create `path` whole with `data` unless it exists (then False). Of processes racing to create it, on one host
    or on several sharing the folder, exactly one does: a hard link is created atomically, on NFS too."""
    temporary = _temporary_beside(path)
    try:
        write_durably(temporary, data)
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)
    fsync_path(path.parent if str(path.parent) else Path("."))
    return True


def temporary_prefix(name: str) -> str:
    """How the temporary files of `write_atomically` and `create_once` for `name` begin."""
    return f".{name}.expo-tmp-"


def _temporary_beside(path: Path) -> Path:
    """A name beside `path` no other process uses, on this host or another sharing the folder."""
    return path.with_name(f"{temporary_prefix(path.name)}{os.getpid()}-{uuid.uuid4().hex[:12]}")


def write_json_atomically(path: Path, data: object) -> None:
    """A JSON record written whole or not at all (see `write_atomically`)."""
    write_atomically(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def fsync_path(path: Path) -> None:
    """Make a file's data, or a folder's entries (new files, renames), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def same_or_inside(child: Path, parent: Path) -> bool:
    child, parent = Path(os.path.realpath(child)), Path(os.path.realpath(parent))
    return child == parent or parent in child.parents


def same_path(a: Path, b: Path) -> bool:
    return Path(os.path.realpath(a)) == Path(os.path.realpath(b))


def check_apart(output: Path, inputs: dict[str, Path]) -> None:
    """Refuse an output that would overwrite, sit inside, or contain an input."""
    for role, path in inputs.items():
        if same_path(output, path):
            raise OutputError(f"--output {output} is the --{role} folder; inputs are never overwritten")
        if same_or_inside(output, path):
            raise OutputError(f"--output {output} is inside --{role} {path}; choose a folder outside the inputs")
        if same_or_inside(path, output):
            raise OutputError(f"--output {output} contains --{role} {path}; choose another output folder")


def check_output(output: Path, force: bool) -> None:
    """Refuse an output that is a file, exists without --force, or cannot be written."""
    if output.exists() and not output.is_dir():
        raise OutputError(f"--output {output} is a file; choose a folder path")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise OutputError(f"--output {output} exists and is not empty; pass --force to replace it")
    parent = existing_parent(output)
    try:  # a real write: os.access says yes to root on a read-only file system
        probe = tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}probe-", dir=parent)
    except OSError as err:
        raise OutputError(f"cannot write into {parent}: {err.strerror}; choose a writable --output") from err
    os.rmdir(probe)


def scratch_folder(parent: Path | None) -> Path:
    """A new temporary folder in `parent` (made when missing: its own parent must exist), else in the system's."""
    if parent is not None and not parent.is_dir():
        if parent.exists():
            raise OutputError(f"--scratch {parent} is a file; choose a folder")
        if not parent.parent.is_dir():
            raise OutputError(
                f"--scratch {parent}: {parent.parent} does not exist; create it or choose another folder"
            )
        try:
            parent.mkdir()
        except OSError as err:
            raise OutputError(
                f"--scratch {parent}: cannot create it ({err.strerror}); choose a writable folder"
            ) from err
    try:
        return Path(tempfile.mkdtemp(prefix=".expo-stream-", dir=parent))
    except OSError as err:
        where = parent if parent is not None else Path(tempfile.gettempdir())
        raise OutputError(
            f"--scratch {where}: cannot write into it ({err.strerror}); choose a writable folder"
        ) from err


def existing_parent(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    return path


def free_space(output: Path) -> int:
    return shutil.disk_usage(existing_parent(output)).free


def check_space(output: Path, needed: int) -> None:
    """Refuse early when the output's file system cannot hold the result."""
    free = free_space(output)
    if needed > free:
        raise OutputError(
            f"not enough space for {output}: needs {human_bytes(needed)}, "
            f"{human_bytes(free)} free; free space or choose another --output"
        )


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).renameat2
    except (OSError, AttributeError):  # no libc, or a glibc older than 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # the file system cannot swap
        return False
    raise OSError(err, os.strerror(err), str(b))


def fingerprint(folder: Path) -> str:
    """A short digest of a folder's files (names, sizes, modification times): changes when any file is rewritten,
    without reading them."""
    entries = sorted(
        (p.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".")
        for stat in (p.stat(),)
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def available_cores() -> int:
    """The cores this process may run on (its affinity: a Slurm or container limit), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def read_ahead(files: Iterable[Path], budget: int) -> None:
    """Ask the kernel to start reading the first `budget` bytes of these files, in order (posix_fadvise
    WILLNEED: advice, returns at once), so that a cold disk works while the process does something else."""
    for path in files:
        if budget <= 0 or not hasattr(os, "posix_fadvise"):
            return
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # not a local file (a Hub view): nothing to advise
            continue
        try:
            length = min(budget, os.fstat(fd).st_size)
            os.posix_fadvise(fd, 0, length, os.POSIX_FADV_WILLNEED)
            budget -= length
        except OSError:  # advice only
            pass
        finally:
            os.close(fd)
