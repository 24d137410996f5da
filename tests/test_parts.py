"""A merge split over a job array: parts written by separate processes at once, one killed and run again, the
result byte-identical to a single-process merge; no complete-looking output until every part is in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expo_cli.arrays import Part, parse_part
from expo_cli.errors import UsageError
from expo_cli.merging.parts import deal, folders
from expo_cli.merging.planning import prepare
from expo_cli.options import MergeOptions
from helpers import snapshot

SHARD = "40MB"


@pytest.mark.parametrize(
    ("value", "parts", "environ", "expected"),
    [
        ("2/8", None, {}, Part(2, 8)),
        (
            "auto",
            None,
            {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"},
            Part(5, 8),
        ),
        (
            "auto",
            None,
            {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "3"},
            Part(4, 4),
        ),
        ("auto", 4, {"JOB_COMPLETION_INDEX": "0"}, Part(1, 4)),
    ],
)
def test_parts_from_the_option_or_the_scheduler(value, parts, environ, expected):
    assert parse_part(value, parts, environ) == expected


@pytest.mark.parametrize(
    ("value", "parts", "environ", "message"),
    [
        ("0/4", None, {}, "parts are numbered 1 to N"),
        ("5/4", None, {}, "parts are numbered 1 to N"),
        ("half", None, {}, "write I/N"),
        ("auto", None, {}, "neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX"),
        ("auto", None, {"JOB_COMPLETION_INDEX": "1"}, "also needs --parts N"),
        ("auto", None, {"SLURM_ARRAY_TASK_ID": "1"}, "not SLURM_ARRAY_TASK_COUNT or _MAX"),
    ],
)
def test_bad_parts_are_usage_errors(value, parts, environ, message):
    with pytest.raises(UsageError, match=message):
        parse_part(value, parts, environ)


def test_shards_are_dealt_by_bytes_the_same_way_every_time(big_pair):
    run = prepare(*big_pair, {0.5: Path("unused")}, MergeOptions(max_shard_size=SHARD, progress=False), whole=False)
    shards = run.main.shards
    dealt = deal(shards, 3)
    assert dealt == deal(list(reversed(shards)), 3)  # from the headers alone, whatever the order
    assert sorted(n for part in dealt for n in part) == sorted(s.filename for s in shards)
    sizes = {s.filename: s.size for s in shards}
    loads = [sum(sizes[n] for n in part) for part in dealt]
    assert max(loads) - min(loads) <= max(sizes.values())


def part(pair, out: Path, index: int, count: int, *extra: str) -> subprocess.Popen:
    """`expo merge --part auto` as a Kubernetes Indexed Job would start it."""
    command = [
        sys.executable,
        "-m",
        "expo_cli",
        "merge",
        "--sft",
        str(pair[0]),
        "--aligned",
        str(pair[1]),
        "-o",
        str(out),
        "--alpha",
        "0.5",
        "--max-shard-size",
        SHARD,
        "--quiet",
        "--part",
        "auto",
        "--parts",
        str(count),
        *extra,
    ]
    env = {**os.environ, "JOB_COMPLETION_INDEX": str(index - 1)}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_a_job_array_with_a_killed_part_gives_the_single_process_result(tmp_path, expo, big_pair):
    single = tmp_path / "single"
    assert (
        expo(
            "merge",
            "--sft",
            big_pair[0],
            "--aligned",
            big_pair[1],
            "-o",
            single,
            "--alpha",
            "0.5",
            "-q",
            "--max-shard-size",
            SHARD,
        ).code
        == 0
    )
    out = tmp_path / "out"
    others = [part(big_pair, out, i, 4) for i in (1, 2, 4)]  # at once, as an array's tasks run
    for proc in others:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    assert not out.exists()  # part 3 has not run: nothing that looks finished

    run = prepare(*big_pair, {0.5: out}, MergeOptions(max_shard_size=SHARD, progress=False), whole=False)
    third = deal(run.main.shards, 4)[2]
    shared, control = folders(out)
    killed = part(big_pair, out, 3, 4)
    deadline = time.monotonic() + 120
    while not any((shared / name).exists() for name in third) and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=60)
    assert not out.exists()
    refused = expo(
        "merge",
        "--sft",
        big_pair[0],
        "--aligned",
        big_pair[1],
        "-o",
        out,
        "--alpha",
        "0.5",
        "--max-shard-size",
        SHARD,
        "--finish",
        "--parts",
        "4",
    )
    assert refused.code == 5 and "part 3/4 has not finished" in refused.stderr and not out.exists()

    again = part(big_pair, out, 3, 4)
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert snapshot(out) == snapshot(single)
    assert not shared.exists() and not control.exists()


def test_parts_of_different_merges_do_not_mix(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    out = tmp_path / "out"
    base = ("merge", "--sft", sft, "--aligned", aligned, "-o", out, "--max-shard-size", "30KB")
    assert expo(*base, "--alpha", "0.5", "--part", "1/2").code == 0
    run = expo(*base, "--alpha", "0.7", "--part", "2/2")
    assert run.code == 2 and "another part planned a different merge" in run.stderr
    assert not out.exists()
    assert expo(*base, "--alpha", "0.5", "--part", "2/2").code == 0
    assert (out / "config.json").exists() and expo("verify", out, "--sft", sft, "--aligned", aligned, "-q").code == 0


def test_a_shard_of_the_wrong_size_is_refused_when_finishing(tmp_path, expo, llama_pair):
    """A part's shard damaged after its record was written: the last part, and --finish, refuse to publish."""
    sft, aligned = llama_pair
    out = tmp_path / "out"
    base = ("merge", "--sft", sft, "--aligned", aligned, "-o", out, "--alpha", "0.5", "--max-shard-size", "30KB")
    assert expo(*base, "--part", "1/2").code == 0
    shared, _ = folders(out)
    shard = sorted(shared.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    run = expo(*base, "--part", "2/2")  # the last part to complete finishes the output
    assert run.code == 5 and f"{shard}: missing or incomplete" in run.stderr, run.stderr
    assert not out.exists()
    run = expo(*base, "--finish", "--parts", "2")
    assert run.code == 5 and f"{shard}: missing or incomplete" in run.stderr, run.stderr
    assert not out.exists()
