"""The options of a merge (and of the merges inside `expo tune`), checked once where they are built."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .constants import DEFAULT_MAX_SHARD_SIZE


@dataclass(frozen=True)
class MergeOptions:
    """Options of `merge`, `sweep` and `plan` (keyword arguments of the same names).

    Attributes:
        dtype: "bfloat16", "float16" or "float32" for every floating tensor; None keeps each aligned dtype.
        device: "cpu", "cuda" or "auto" (CUDA when available).
        max_shard_size: bytes per output shard, an int or a string such as "5GB" (decimal units).
        force: replace non-empty outputs.
        alpha_for: "REGEX=VALUE" rules giving matching tensors another α (first match wins).
        include: only tensors matching one of these are extrapolated (the others keep the aligned values).
        exclude: tensors matching one of these keep the aligned values.
        allow_architecture_mismatch: skip the config.json model_type/architectures check.
        strict: make inf/NaN already present in an input an error instead of a warning.
        progress: show a progress bar on stderr.
        warn: called with each warning for the user; default: printed to stderr.
        info: called with each informational message (the formula, what was handled); default: stderr.
        sft_revision, aligned_revision: branch, tag or commit when `sft`/`aligned` are Hub repo ids
            (or write `org/name@revision`).
        token: a Hub token; default: HF_TOKEN or the saved login.
        sft_id, aligned_id: the Hub repos (`org/name[@revision]`) local inputs were downloaded from, for the
            card's `base_model` and the provenance.
        model_name: the card's model_name and title (default: `<aligned name>-expo`; a sweep adds `-alpha-<α>`).
        copy, skip: globs of aligned-folder files to copy, or to leave out, whatever the side-file policy says.
        mistral_format: also extrapolate the Mistral-format weights (consolidated*.safetensors) both inputs have.
        stream: read Hub inputs by range requests instead of downloading them (`merge_to_hub`).
        tuning: how `expo tune` chose α (its summary), recorded in the provenance and the model card.
        base: the base model when `sft` is a LoRA adapter (default: its config's base_model_name_or_path).
        adapter_stack: "on-sft" or "continued" when both inputs are adapters and their configs do not tell.
        as_adapter: write a PEFT adapter for the same SFT model instead of a full checkpoint (aligned adapters).
    """

    dtype: str | None = None
    device: str = "auto"
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE
    force: bool = False
    alpha_for: Sequence[str] = ()
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    allow_architecture_mismatch: bool = False
    strict: bool = False
    progress: bool = True
    warn: Callable[[str], None] | None = None
    info: Callable[[str], None] | None = None
    sft_revision: str | None = None
    aligned_revision: str | None = None
    token: str | None = None
    sft_id: str | None = None
    aligned_id: str | None = None
    model_name: str | None = None
    copy: Sequence[str] = ()
    skip: Sequence[str] = ()
    mistral_format: bool = False
    stream: bool = False
    tuning: dict[str, Any] | None = None
    base: str | None = None
    adapter_stack: str | None = None
    as_adapter: bool = False

    def warning(self, message: str) -> None:
        (self.warn or _stderr_warning)(message)

    def inform(self, message: str) -> None:
        (self.info or _stderr)(message)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _stderr_warning(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)
