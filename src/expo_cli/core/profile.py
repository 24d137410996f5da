"""`--profile`: where a merge's time goes, stage by stage, so that the bottleneck is visible.

Each stage records wall and CPU seconds (`time.thread_time`) on the thread that ran it, exclusive of the stages
nested in it (a stage that waits inside the arithmetic is not counted twice). The main thread runs the plan and the
stream (reading the inputs through mmap, where page faults are part of the arithmetic, and computing), and waits
when the writer's buffers are all taken; the writer thread writes and fsyncs, and waits for data; the hasher hashes,
and waits for what the writer wrote. Waiting stages show which side holds the others up.

The hooks cost a dictionary lookup when no profile is active (the default).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..fsutil import available_cores


class Profile:
    """Stages from `start()` on; the totals count from the process's start (its CPU time is the process's)."""

    def __init__(self) -> None:
        self.stages: dict[tuple[str, str], list[float]] = {}  # (thread, stage) -> [wall, cpu, calls]
        self._lock = threading.Lock()
        self._local = threading.local()
        age = process_age()
        self.started = time.perf_counter() - (age or 0.0)
        if age is not None:
            self.add("start-up (interpreter, imports, arguments)", age, time.process_time())

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        stack: list[list[Any]] = self._local.__dict__.setdefault("stack", [])
        now, cpu = time.perf_counter(), time.thread_time()
        if stack:  # the enclosing stage pauses
            self._flush(stack[-1], now, cpu)
        stack.append([name, now, cpu])
        try:
            yield
        finally:
            now, cpu = time.perf_counter(), time.thread_time()
            self._flush(stack.pop(), now, cpu, call=True)
            if stack:
                stack[-1][1:] = [now, cpu]

    def _flush(self, entry: list[Any], now: float, cpu: float, call: bool = False) -> None:
        name, wall_started, cpu_started = entry
        self.add(name, now - wall_started, cpu - cpu_started, int(call))
        entry[1:] = [now, cpu]

    def add(self, name: str, wall: float, cpu: float = 0.0, calls: int = 1) -> None:
        """Time on this thread's stage `name` (also one measured elsewhere: the start-up)."""
        key = (threading.current_thread().name, name)
        with self._lock:
            totals = self.stages.setdefault(key, [0.0, 0.0, 0])
            totals[0], totals[1], totals[2] = totals[0] + wall, totals[1] + cpu, totals[2] + calls

    def to_json(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        cpu = time.process_time()
        cores = available_cores()
        return {
            "wall_seconds": wall,
            "cpu_seconds": cpu,
            "cores": cores,
            "cpu_utilisation": cpu / max(wall * cores, 1e-9),
            "stages": [
                {"thread": thread, "stage": name, "wall_seconds": w, "cpu_seconds": c, "calls": n}
                for (thread, name), (w, c, n) in self.stages.items()
            ],
        }


_active: Profile | None = None


def start() -> Profile:
    """Begin profiling this process (`--profile`); stages from now on are recorded."""
    global _active
    _active = Profile()
    return _active


def stop() -> None:
    global _active
    _active = None


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Record `name` in the active profile, if any."""
    profile = _active
    if profile is None:
        yield
        return
    with profile.stage(name):
        yield


def process_age() -> float | None:
    """Seconds since this process started (Linux: /proc), the start-up before any expo code ran included."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
