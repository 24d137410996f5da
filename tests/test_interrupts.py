"""A real `expo` process stopped mid-write: SIGINT/SIGTERM clean up, SIGKILL leaves only a named temp folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from _checkpoints import llama_config, snapshot

ELEMENTS = 8 * 1024 * 1024  # 32 MB float32 per tensor


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory) -> tuple[Path, Path]:
    """256 MB per model: long enough to be caught mid-write. Random data; only the headers must agree."""
    root = tmp_path_factory.mktemp("big")
    config = {**llama_config().to_dict(), "architectures": ["LlamaForCausalLM"]}
    generator = torch.Generator().manual_seed(0)
    for role in ("sft", "aligned"):
        folder = root / role
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        tensors = {f"layer.{i}.weight": torch.randn(ELEMENTS, generator=generator) for i in range(8)}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return root / "sft", root / "aligned"


def start(sft: Path, aligned: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [
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
        "40MB",
        "--quiet",
        *extra,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_partial_shard(out: Path, proc: subprocess.Popen) -> Path:
    """Block until the run has started writing shards into its temporary folder."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for partial in out.parent.glob(f".expo-partial-{out.name}-*"):
            if any(partial.glob("*.safetensors")):
                return partial
        time.sleep(0.001)
    raise AssertionError(f"no partial shard seen (exit {proc.poll()}): {proc.communicate()[1]}")


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
