"""A merge split over a job array: each part writes its share of the output shards, the last one finishes.

All parts plan the same run from the same headers (`planning.prepare` is deterministic), so they agree without
talking: the shards are dealt to N parts by size, largest first to the lightest part. Part I writes its shards
into `.expo-parts-<name>/` beside the output, a folder every part shares (a shared file system), then records
them in `.expo-parts-<name>.control/part-I-of-N.json` (sizes and sha256). The part that finds every record present
takes the finishing lock (an exclusive create, so exactly one does), adds index, config, card and side files,
and renames the shared folder into place; `--finish` does the same by hand. A part run again redoes only its own
shards; until every part has recorded its shards there is no output, only the two dot-folders.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..arrays import Part
from ..core.writer import Shard
from ..errors import OutputError, UsageError
from ..fsutil import check_space, create_once, write_json_atomically
from ..options import MergeOptions
from .execution import MergeResult, finish, result_of, write_shards
from .run import PreparedRun
from .staging import publish


def deal(shards: list[Shard], count: int) -> list[list[str]]:
    """The shard files of each part, balanced by bytes, the same in every process: largest shard first, each to
    the part with the fewest bytes so far (the lowest part on a tie)."""
    loads = [0] * count
    dealt: list[list[str]] = [[] for _ in range(count)]
    for shard in sorted(shards, key=lambda s: (-s.size, s.filename)):
        lightest = min(range(count), key=lambda i: (loads[i], i))
        loads[lightest] += shard.size
        dealt[lightest].append(shard.filename)
    return dealt


def folders(output: Path) -> tuple[Path, Path]:
    """The shared folder that becomes the output, and the control folder beside it."""
    output = Path(os.path.abspath(output))
    shared = output.parent / f".expo-parts-{output.name}"
    return shared, Path(f"{shared}.control")


def run_part(run: PreparedRun, part: Part, opts: MergeOptions) -> MergeResult | None:
    """Write this part's shards; finish the output if it is the last part. Returns the result once finished."""
    started = time.perf_counter()
    ((alpha, output),) = run.targets.items()
    shared, control = folders(output)
    shared.mkdir(parents=True, exist_ok=True)
    control.mkdir(exist_ok=True)
    _agree(run, control)
    mine = set(deal([s for w in run.weights for s in w.shards], part.count)[part.index - 1])
    for name in mine:  # a part run again redoes its own shards, and only those
        (shared / name).unlink(missing_ok=True)
    check_space(shared, sum(s.size for w in run.weights for s in w.shards if s.filename in mine))
    (control / part.record).unlink(missing_ok=True)
    checksums = write_shards(run, {alpha: shared}, opts, only=mine)[alpha]
    sizes = {s.filename: s.size for w in run.weights for s in w.shards if s.filename in mine}
    write_json_atomically(
        control / part.record,
        {"part": str(part), "shards": {n: {"bytes": sizes[n], "sha256": checksums[n]} for n in sorted(mine)}},
    )
    opts.inform(f"Part {part}: {len(mine)} shard(s) written")
    records = sorted(control.glob(f"part-*-of-{part.count:04d}.json"))
    if len(records) < part.count:
        return None
    try:
        os.close(os.open(control / "finishing", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return None  # another part, completing at the same moment, finishes
    return finish_parts(run, part.count, opts, started)


def finish_parts(run: PreparedRun, count: int, opts: MergeOptions, started: float | None = None) -> MergeResult:
    """Check that every part recorded its shards and they are all there, then finish and publish the output."""
    started = started if started is not None else time.perf_counter()
    ((alpha, output),) = run.targets.items()
    shared, control = folders(output)
    if not control.is_dir():
        raise OutputError(f"{shared}: no parts of this merge were run; run the parts first (--part I/N)")
    _agree(run, control)
    checksums: dict[str, str] = {}
    for index in range(1, count + 1):
        record = control / Part(index, count).record
        try:
            entries = json.loads(record.read_text())["shards"]
        except (OSError, ValueError, KeyError) as err:
            raise OutputError(f"part {index}/{count} has not finished ({record.name} missing); run it again") from err
        checksums.update({name: entry["sha256"] for name, entry in entries.items()})
    if output.exists() and not opts.force:
        raise OutputError(f"--output {output} exists and is not empty; pass --force to replace it")
    finish(run, alpha, shared, checksums)  # refuses a missing or short shard
    publish(shared, output, opts.force)
    shutil.rmtree(control, ignore_errors=True)
    return result_of(run, alpha, output, time.perf_counter() - started)


def _agree(run: PreparedRun, control: Path) -> None:
    """Every part must plan the same run: the first records its plan, the others compare theirs with it."""
    plan = json.dumps(run.to_json(), indent=1, sort_keys=True).encode()
    path = control / "plan.json"
    if not create_once(path, plan) and path.read_bytes() != plan:  # created whole, by exactly one part
        raise UsageError(
            f"{path}: another part planned a different merge (other inputs, α or options); every part of a "
            "job array must run the same command"
        )
