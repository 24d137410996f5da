"""Shared fixtures: an isolated Hugging Face home, tiny model pairs, and the CLI run in-process."""

from __future__ import annotations

import json
import os
import tempfile

from hub_server import WRITE_TOKEN, serve

# Before anything imports huggingface_hub (it reads these once): the Hub is our own server on 127.0.0.1.
HUB, _SERVER = serve()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{_SERVER.server_address[1]}"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="expo-tests-hf-home-")
os.environ.pop("HF_HUB_CACHE", None)
os.environ["EXPO_CACHE"] = tempfile.mkdtemp(prefix="expo-tests-cache-")  # tune's default run folders
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("HF_TOKEN", None)

import importlib.util  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import expo_cli  # noqa: E402
from expo_cli.cli import main  # noqa: E402
from helpers import KILLING_GRADER, TUNE_PROMPTS, llama_config, make_pair, skip_or_fail, steered_pair  # noqa: E402

# `expo` subprocesses run the same expo_cli as this process (under mutmut: the mutated copy in mutants/).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(expo_cli.__file__).parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
)

# The vLLM backend's tests run in the environment that has vLLM (`make test` builds .venv-vllm and runs them there;
# vLLM pins its own transformers): an environment without it does not collect them.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["test_vllm.py"]


@pytest.fixture
def hub():
    """The test Hub's state: create repos in it, inspect what it received."""
    return HUB


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def expo(capsys):
    """Run `expo ARGS...` in-process through the real entry point; return exit code and both streams."""

    def run(*args: object) -> Run:
        handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            signal.signal(signal.SIGINT, handlers[0])
            signal.signal(signal.SIGTERM, handlers[1])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def llama_pair(tmp_path_factory) -> tuple[Path, Path]:
    """bfloat16 Llama pair: SFT in one file, aligned in several shards. Read-only for tests."""
    return make_pair(tmp_path_factory.mktemp("llama"), dtype=torch.bfloat16, sft_shards=None, aligned_shards="30KB")


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


@pytest.fixture
def tmpfs(tmp_path):
    """A real small file system, mounted for the test (tests and CI run as root here)."""
    mounts = []

    def mount(size: str, readonly: bool = False) -> Path:
        point = tmp_path / f"fs{len(mounts)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if readonly else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if proc.returncode != 0:
            skip_or_fail(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def token(monkeypatch):
    """A token the test Hub accepts for writes, as HF_TOKEN."""
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    return WRITE_TOKEN


@pytest.fixture(scope="session")
def steered(tmp_path_factory) -> tuple[Path, Path]:
    """A float32 pair whose extrapolation says "w7" more: tune's run-folder tests. Read-only for tests."""
    return steered_pair(tmp_path_factory.mktemp("steered"))


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A folder with tune's prompts and its grader (which can kill or interrupt its own process: KILLING_GRADER)."""
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in TUNE_PROMPTS))
    (tmp_path / "grader.py").write_text(KILLING_GRADER)
    return tmp_path
