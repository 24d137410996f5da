"""File names and defaults shared across modules."""

from __future__ import annotations

import re

from huggingface_hub.constants import (
    CONFIG_NAME,
    PYTORCH_WEIGHTS_NAME,
    REPOCARD_NAME,
    SAFETENSORS_INDEX_FILE,
    SAFETENSORS_SINGLE_FILE,
)

VERSION = "0.1.0"
PYTORCH_INDEX_FILE = PYTORCH_WEIGHTS_NAME + ".index.json"
MISTRAL_INDEX_FILE = "consolidated.safetensors.index.json"  # Mistral-format weights beside the HF ones
OUTPUT_FILENAME_PATTERN = "model{suffix}.safetensors"
DEFAULT_MAX_SHARD_SIZE = "5GB"
ADAPTER_CONFIG = "adapter_config.json"  # a PEFT adapter's config

# Extensions of weight files: never copied from the aligned folder into the output (they would be the
# un-extrapolated weights, or a second copy of them in another format).
WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".npz")
WEIGHT_INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")

# Elements per chunk of the streaming arithmetic: bounds memory whatever the tensor size.
CHUNK_ELEMENTS = 8 * 1024 * 1024

# The name prefix of a run's temporary output folder (beside the target).
PARTIAL_PREFIX = ".expo-partial-"

__all__ = [
    "CONFIG_NAME",
    "PYTORCH_WEIGHTS_NAME",
    "REPOCARD_NAME",
    "SAFETENSORS_INDEX_FILE",
    "SAFETENSORS_SINGLE_FILE",
]

# `org/name` or `org/name@revision`; characters a Hub repo id may hold. Paths with `+`, spaces or
# backslashes, or starting with `.`, `/` or `~`, never match.
REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
