"""The README's failure guarantees, pinned by what the operating system saw: every file and folder of the output is
fsync-ed before the rename that publishes it, `--force` swaps the old output for the new one in one atomic step,
and a `--force` run that fails or is killed leaves the previous output exactly as it was.

The system calls are recorded by strace around a real `expo` process (no function is patched). strace ships with
this project's machines; where it is missing the test is skipped locally and fails in CI (CI=true).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from helpers import skip_or_fail, snapshot, start, wait_for_partial_shard

STRACE = shutil.which("strace")


def traced_merge(tmp_path: Path, sft: Path, aligned: Path, out: Path, *extra: str) -> list[str]:
    """Run `expo merge` under strace; return its fsync/rename system calls with the paths they touched."""
    if STRACE is None:
        skip_or_fail("strace is not installed")
    log = tmp_path / "strace.log"
    command = [
        STRACE,
        "-f",
        "-qq",
        "-y",
        "-o",
        str(log),
        "-e",
        "trace=fsync,fdatasync,rename,renameat,renameat2",
        sys.executable,
        "-m",
        "expo_cli",
        "merge",
        "--sft",
        str(sft),
        "--aligned",
        str(aligned),
        "-o",
        str(out),
        "--alpha",
        "0.5",
        "--max-shard-size",
        "20KB",
        "--quiet",
        *extra,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [line for line in log.read_text().splitlines() if "resumed>" not in line or "fsync" in line]


def fsynced(calls: list[str]) -> list[str]:
    """The paths fsync-ed, in order (strace -y prints each descriptor's path)."""
    return [m[1] for line in calls if (m := re.search(r"f(?:data)?sync\(\d+<([^>]+)>", line))]


def publish_index(calls: list[str], out: Path) -> int:
    """The index of the call that put the staged folder at `out`."""
    for i, line in enumerate(calls):
        if re.search(r"rename", line) and f'"{out}"' in line and ".expo-partial-" in line.split(f'"{out}"')[0]:
            return i
    raise AssertionError(f"no rename onto {out} in:\n" + "\n".join(calls))


def assert_all_durable_before_publishing(calls: list[str], out: Path) -> None:
    published = publish_index(calls, out)
    staged = re.search(r'"([^"]*\.expo-partial-[^"]*)"', calls[published])[1]
    before = set(fsynced(calls[:published]))
    expected = {os.path.join(staged, p.relative_to(out)) for p in out.rglob("*")} | {staged}
    missing = sorted(expected - before)
    assert not missing, f"not fsync-ed before the rename that publishes the output: {missing}"
    assert str(out.parent) in fsynced(calls[published:]), "the parent folder is not fsync-ed after the rename"


def test_every_file_and_folder_is_fsynced_before_the_output_appears(tmp_path, llama_pair):
    sft, aligned = (shutil.copytree(p, tmp_path / p.name) for p in llama_pair)
    (aligned / "additional_chat_templates").mkdir()
    (aligned / "additional_chat_templates" / "tools.jinja").write_text("{{ tools }}")
    out = tmp_path / "out"
    calls = traced_merge(tmp_path, sft, aligned, out)
    names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert {
        "model.safetensors.index.json",
        "config.json",
        "README.md",
        "tokenizer_config.json",
        "additional_chat_templates/tools.jinja",
        "additional_chat_templates",
    } <= names
    assert sum(name.startswith("model-") for name in names) > 1
    assert_all_durable_before_publishing(calls, out)


def test_force_swaps_the_outputs_atomically(tmp_path, llama_pair):
    sft, aligned = llama_pair
    out = tmp_path / "out"
    traced_merge(tmp_path, sft, aligned, out)
    calls = traced_merge(tmp_path, sft, aligned, out, "--force")
    assert_all_durable_before_publishing(calls, out)
    swap = calls[publish_index(calls, out)]
    assert "renameat2(" in swap and "RENAME_EXCHANGE" in swap, swap
    moved_away = [c for c in calls if re.search(rf'rename\w*\((?:[^,"]*, )?"{re.escape(str(out))}",', c)]
    assert not moved_away, f"the old output was renamed away, leaving a moment with no output: {moved_away}"
    assert not list(tmp_path.glob(".expo-partial-*"))  # the old output, swapped into the staging path, is gone


def test_a_failed_force_run_keeps_the_previous_output(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    out = tmp_path / "out"
    assert expo("merge", "--sft", sft, "--aligned", aligned, "-o", out, "--alpha", "0.5", "-q").code == 0
    before = snapshot(out)
    run = expo(
        "merge", "--sft", sft, "--aligned", aligned, "-o", out, "--alpha", "1e8", "--dtype", "float16", "--force", "-q"
    )
    assert run.code == 6, run.stderr  # float16 overflow, found mid-stream
    assert snapshot(out) == before
    assert not list(tmp_path.glob(".expo-partial-*"))


def test_a_killed_force_run_keeps_the_previous_output(tmp_path, big_pair):  # noqa: F811
    out = tmp_path / "out"
    first = start(*big_pair, out)
    assert first.wait(timeout=300) == 0, first.communicate()[1]
    before = snapshot(out)
    proc = start(*big_pair, out, "--force")
    wait_for_partial_shard(out, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert snapshot(out) == before


def test_a_partial_folder_of_a_live_process_is_left_alone(tmp_path, expo, llama_pair):
    sft, aligned = llama_pair
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import json
        import socket

        live = tmp_path / f".expo-partial-out-{sleeper.pid}-abcd1234"
        live.mkdir()
        Path(f"{live}.owner").write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid}))
        legacy = tmp_path / f".expo-partial-out-{sleeper.pid}-legacy00"  # no owner record: judged by its name
        legacy.mkdir()
        dead = tmp_path / ".expo-partial-out-999999999-abcd1234"
        dead.mkdir()
        run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "out", "--alpha", "0.5")
        assert run.code == 0, run.stderr
        assert live.is_dir() and legacy.is_dir(), "a running merge's temporary folder was removed"
        assert not dead.exists() and f"removing {dead}" in run.stderr
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_partial_folder_of_another_host_is_judged_by_its_heartbeat(tmp_path, expo, llama_pair):
    """On a shared file system another node's pids mean nothing here: only a record left untouched is stale."""
    import json
    import time

    from expo_cli.merging.staging import STALE_AFTER_SECONDS

    sft, aligned = llama_pair
    running, dead = tmp_path / ".expo-partial-out-1-aaaa0000", tmp_path / ".expo-partial-out-2-bbbb0000"
    for folder in (running, dead):
        folder.mkdir()
        Path(f"{folder}.owner").write_text(json.dumps({"host": "another-node", "pid": 1}))
    old = time.time() - STALE_AFTER_SECONDS - 60
    os.utime(f"{dead}.owner", (old, old))
    run = expo("merge", "--sft", sft, "--aligned", aligned, "-o", tmp_path / "out", "--alpha", "0.5")
    assert run.code == 0, run.stderr
    assert running.is_dir() and Path(f"{running}.owner").exists(), "another node's running merge was removed"
    assert not dead.exists() and not Path(f"{dead}.owner").exists() and f"removing {dead}" in run.stderr
    assert not list(tmp_path.glob(".expo-partial-out-*-*.owner"))[1:]  # only the running node's record is left
