"""Which task of a job array this process is: `--part I/N` or `auto` (Slurm, a Kubernetes Indexed Job), for
`expo merge` (a share of the output shards) and `expo tune` (a share of the candidates) alike."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class Part:
    index: int  # 1-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def record(self) -> str:
        return f"part-{self.index:04d}-of-{self.count:04d}.json"


def parse_part(value: str, parts: int | None = None, environ: Mapping[str, str] = os.environ) -> Part:
    """`I/N` (1-based), or `auto`: Slurm's array variables, or a Kubernetes Indexed Job's index with `--parts N`."""
    if value == "auto":
        if "SLURM_ARRAY_TASK_ID" in environ:
            task, low = int(environ["SLURM_ARRAY_TASK_ID"]), int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            if "SLURM_ARRAY_TASK_COUNT" in environ:
                count = int(environ["SLURM_ARRAY_TASK_COUNT"])
            elif "SLURM_ARRAY_TASK_MAX" in environ:
                count = int(environ["SLURM_ARRAY_TASK_MAX"]) - low + 1
            else:
                raise UsageError("--part auto: SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT or _MAX")
            return _checked(task - low + 1, parts or count, "--part auto (Slurm)")
        if "JOB_COMPLETION_INDEX" in environ:
            if not parts:
                raise UsageError("--part auto: a Kubernetes Indexed Job also needs --parts N (its completions)")
            return _checked(int(environ["JOB_COMPLETION_INDEX"]) + 1, parts, "--part auto (JOB_COMPLETION_INDEX)")
        raise UsageError("--part auto: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set; use --part I/N")
    index, sep, count = value.partition("/")
    if not sep or not index.isdigit() or not count.isdigit():
        raise UsageError(f"--part {value!r}: write I/N, for example 2/8 (1-based), or auto")
    return _checked(int(index), int(count), f"--part {value}")


def _checked(index: int, count: int, option: str) -> Part:
    if not 1 <= index <= count:
        raise UsageError(f"{option}: part {index} of {count} does not exist; parts are numbered 1 to N")
    return Part(index, count)
