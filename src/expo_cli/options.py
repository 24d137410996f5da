"""The options of a merge (and of the merges inside `expo tune`), checked once where they are built.

Every value is validated, and every conflict between options refused, when a `MergeOptions` is made: before any
input is read, and in one place for the library and the CLI alike.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .alpha import AlphaRule, parse_rules
from .constants import DEFAULT_MAX_SHARD_SIZE, REPO_ID
from .core.sources import canonical_dtype, dtype_code
from .core.writer import parse_size
from .errors import UsageError
from .trajectory import Milestone, check_delta_rank, parse_trajectory


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
        profile: record where the time goes, stage by stage and thread by thread (`MergeResult.profile`).
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
        streams: shards written at once, each with its own arithmetic, write and hash threads (0: one per two
            cores, at least 2; 1: one after the other). Each costs a block buffer pool (`expo merge --dry-run`
            states the peak); outputs are byte for byte the same whatever the number.
        connections: with `stream`, range requests in flight per input (each input also reads ahead at most
            128 MB, so memory stays bounded whatever the model size).
        tuning: how `expo tune` chose α (its summary), recorded in the provenance and the model card.
        base: the base model when `sft` is a LoRA adapter (default: its config's base_model_name_or_path).
        adapter_stack: "on-sft" or "continued" when both inputs are adapters and their configs do not tell.
        as_adapter: write a PEFT adapter for the same SFT model instead of a full checkpoint (aligned adapters).
        trajectory: "STEP=CHECKPOINT" for every checkpoint of a training run, earliest first: the inputs are then
            these (`sft` and `aligned` None) and α is ExPO's between the least-squares line at the first and last
            steps (`expo_cli.trajectory.alpha_for_step` turns a step into it).
        delta_rank: replace each matrix's update (θ_aligned − θ_sft) by its best approximation of this rank.
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
    profile: bool = False
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
    streams: int = 0
    connections: int = 4
    tuning: dict[str, Any] | None = None
    base: str | None = None
    adapter_stack: str | None = None
    as_adapter: bool = False
    trajectory: Sequence[str] = ()
    delta_rank: int | None = None

    def __post_init__(self) -> None:
        """Refuse bad values and conflicting options now, whatever the order they would be used in later."""
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))  # bf16 -> bfloat16, everywhere after
        _ = self.out_code, self.rules, self.shard_bytes  # each raises on a bad value
        for role, hub_id in (("sft", self.sft_id), ("aligned", self.aligned_id)):
            if hub_id is not None and not REPO_ID.match(hub_id):
                raise UsageError(f"--{role}-id {hub_id!r}: write the Hub repo as org/name or org/name@revision")
        if self.streams < 0:
            raise UsageError(f"--streams {self.streams}: must be 0 (automatic) or more")
        if self.connections < 1:
            raise UsageError(f"--connections {self.connections}: must be at least 1")
        if self.mistral_format and self.rules:
            raise UsageError(
                "--mistral-format cannot take per-tensor α rules: they name Hugging Face tensors, and "
                "the two formats of one output must hold the same model"
            )
        if self.mistral_format and self.stream:
            raise UsageError("--stream writes the Hugging Face format only; drop --mistral-format")
        if self.mistral_format and self.as_adapter:
            raise UsageError("--as-adapter writes a PEFT adapter; drop --mistral-format")
        check_delta_rank(self.delta_rank)
        refined = [name for name, on in (("--trajectory", self.trajectory), ("--delta-rank", self.delta_rank)) if on]
        exclusive = [name for name, on in (("--stream", self.stream), ("--as-adapter", self.as_adapter),
                                           ("--mistral-format", self.mistral_format)) if on]  # fmt: skip
        if refined and exclusive:
            raise UsageError(f"{refined[0]} cannot be combined with {exclusive[0]}")
        if self.milestones is not None:
            for option, value in (
                ("--sft-revision", self.sft_revision),
                ("--aligned-revision", self.aligned_revision),
                ("--sft-id", self.sft_id),
                ("--aligned-id", self.aligned_id),
                ("--base", self.base),
            ):
                if value is not None:
                    raise UsageError(
                        f"--trajectory names every checkpoint (org/name@revision for a branch); drop {option}"
                    )

    @cached_property
    def milestones(self) -> list[Milestone] | None:
        """--trajectory's checkpoints, checked (None: a merge of --sft and --aligned)."""
        return parse_trajectory(self.trajectory) if self.trajectory else None

    @cached_property
    def out_code(self) -> str | None:
        """The safetensors dtype code of every floating output tensor (None: each aligned tensor's own)."""
        return dtype_code(self.dtype)

    @cached_property
    def rules(self) -> list[AlphaRule]:
        """--alpha-for, --exclude and --include as per-tensor α rules, in the order they apply."""
        return parse_rules(self.alpha_for, self.include, self.exclude)

    @cached_property
    def shard_bytes(self) -> int:
        """--max-shard-size in bytes."""
        try:
            size = parse_size(self.max_shard_size)
        except ValueError as err:
            raise UsageError(
                f"--max-shard-size {self.max_shard_size!r}: use a size such as 5GB, 500MB or 2000000000"
            ) from err
        if size <= 0:
            raise UsageError(f"--max-shard-size {self.max_shard_size!r}: must be positive")
        return size

    def warning(self, message: str) -> None:
        (self.warn or _stderr_warning)(message)

    def inform(self, message: str) -> None:
        (self.info or _stderr)(message)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _stderr_warning(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)
