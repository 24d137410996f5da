"""Shared fixtures: an isolated Hugging Face home, tiny model pairs, and the CLI run in-process."""

from __future__ import annotations

import os
import tempfile

from hub_server import serve

# Before anything imports huggingface_hub (it reads these once): the Hub is our own server on 127.0.0.1.
HUB, _SERVER = serve()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{_SERVER.server_address[1]}"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="expo-tests-hf-home-")
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("HF_TOKEN", None)

import signal  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import expo_cli  # noqa: E402
from expo_cli.cli import main  # noqa: E402

from _checkpoints import make_pair  # noqa: E402

# `expo` subprocesses run the same expo_cli as this process (under mutmut: the mutated copy in mutants/).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(expo_cli.__file__).parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
)


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
