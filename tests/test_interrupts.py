"""A real `expo` process stopped mid-write: SIGINT/SIGTERM clean up, SIGKILL leaves only a named temp folder."""

from __future__ import annotations

import os
import signal

import pytest

from helpers import snapshot, start, wait_for_partial_shard


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_removes_the_partial_output(tmp_path, big_pair, signum, code):
    before = snapshot(big_pair[0]), snapshot(big_pair[1])
    out = tmp_path / "out"
    proc = start(*big_pair, out)
    wait_for_partial_shard(out, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"Error: interrupted by {signal.Signals(signum).name}; the partial output was removed"
    )
    assert "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".expo-partial-*"))
    assert (snapshot(big_pair[0]), snapshot(big_pair[1])) == before


def test_sigkill_leaves_no_finished_looking_output_and_the_next_run_cleans_up(tmp_path, big_pair):
    out = tmp_path / "out"
    proc = start(*big_pair, out)
    partial = wait_for_partial_shard(out, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not out.exists()
    assert partial.exists() and partial.name.startswith(".expo-partial-out-")

    proc = start(*big_pair, out)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert f"Warning: removing {partial}, left by an earlier run that did not finish" in stderr
    assert not partial.exists() and (out / "model.safetensors.index.json").exists()
