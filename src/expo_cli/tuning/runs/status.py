"""`expo tune --status RUN`: what a run folder holds and who is working on it, read without taking it.

Each candidate on each part of the prompts is "done" (every batch generated and scored), "running" (claimed by a
live process: its host, pid and last heartbeat), "stopped" (some batches made, nobody on it: a killed process's
work, resumed by the next run) or "left" (in the grid of a split run, not started).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ...errors import UsageError
from ..decision.candidate import CONFIRMATION, SELECTION
from .claims import holders
from .reporting import RESULT
from .runfolder import FINISHED, MARKER, PLAN, read_lines


def tune_status(run_dir: str | Path) -> dict[str, Any]:
    """The state of the run folder `run_dir`, as `--status` prints it."""
    path = Path(run_dir)
    try:
        key = json.loads((path / MARKER).read_text())["key"]
        sizes = {part: int(key["split"][part]) for part in (SELECTION, CONFIRMATION)}
        batch_size = int(key["decoding"]["batch_size"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--status {path.name}: not an expo tune run folder (no readable {MARKER})") from err
    plan = _json(path / PLAN)
    totals = {part: math.ceil(size / batch_size) for part, size in sizes.items()}
    claimed = holders(path)
    now = time.time()
    candidates = []
    for part in (SELECTION, CONFIRMATION):
        found = {float(f.stem.removeprefix("alpha=")) for f in (path / "generations" / part).glob("alpha=*.jsonl")}
        grid = set(plan["alphas"]) if plan and part == SELECTION else set()
        for alpha in sorted(found | grid):
            generated = _batches(path / "generations" / part / f"alpha={alpha!r}.jsonl")
            scored = {
                _reward_name(folder): len(_batches(folder / part / f"alpha={alpha!r}.jsonl") & generated)
                for folder in sorted((path / "rewards").glob("*"))
                if folder.is_dir()
            }
            holder = claimed.get(f"{part}/alpha={alpha!r}")
            entry: dict[str, Any] = {
                "alpha": alpha,
                "part": part,
                "batches": totals[part],
                "generated": len(generated),
                "scored": scored,
            }
            if holder is not None and holder.alive(now):
                entry["state"] = "running"
                since = round(now - holder.heartbeat, 1)
                entry["by"] = {"host": holder.host, "pid": holder.pid, "heartbeat_seconds_ago": since}
            elif len(generated) == totals[part] and any(n == totals[part] for n in scored.values()):
                entry["state"] = "done"
            else:
                entry["state"] = "stopped" if generated else "left"
            candidates.append(entry)
    finishing = claimed.get("finish")
    return {
        "run_dir": str(path),
        "prompts": sizes,
        "plan": plan,
        "candidates": candidates,
        "finishing": finishing is not None and finishing.alive(now),
        "finished": (path / FINISHED).is_file() or (plan is None and (path / RESULT).is_file()),
    }


def _batches(file: Path) -> set[int]:
    return {line["batch"] for _, line in read_lines(file, file.name) if isinstance(line, dict) and "batch" in line}


def _reward_name(folder: Path) -> str:
    reward = _json(folder / "reward.json") or {}
    return str(reward.get("reward_fn") or reward.get("reward_model") or folder.name)


def _json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None
