"""expo merge: extrapolate an aligned checkpoint away from its SFT checkpoint.

Usage:
    expo merge --sft ./zephyr-sft --aligned ./zephyr-dpo --output ./zephyr-expo --alpha 0.5
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..constants import DEFAULT_MAX_SHARD_SIZE
from . import _output as out
from ._options import (
    AlignedOpt,
    AllowArchOpt,
    AlphaOpt,
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    JsonOpt,
    MaxShardSizeOpt,
    QuietOpt,
    SftOpt,
    StrictOpt,
)

MERGE_EXAMPLES = [
    "expo merge --sft ./zephyr-sft --aligned ./zephyr-dpo --output ./zephyr-expo --alpha 0.5",
    "expo merge --sft ./sft --aligned ./dpo-20pct --output ./expo-f32 --alpha 2.5 --dtype float32",
    "expo merge --sft ./sft --aligned ./dpo --output ./out --alpha 0.3 --json --quiet > summary.json",
]


def merge(
    sft: SftOpt,
    aligned: AlignedOpt,
    output: Annotated[str, typer.Option("--output", "-o", help="Folder to write the merged checkpoint into.")],
    alpha: AlphaOpt,
    dtype: DtypeOpt = None,
    device: DeviceOpt = "auto",
    max_shard_size: MaxShardSizeOpt = DEFAULT_MAX_SHARD_SIZE,
    force: ForceOpt = False,
    strict: StrictOpt = False,
    allow_architecture_mismatch: AllowArchOpt = False,
    quiet: QuietOpt = False,
    json: JsonOpt = False,
) -> None:
    """Write θ_expo = θ_aligned + α·(θ_aligned − θ_sft) as a new sharded safetensors checkpoint."""
    import math

    from huggingface_hub.utils import are_progress_bars_disabled

    from ..extrapolate import formula
    from ..merging import merge as run_merge
    from ..output import human_bytes

    if not math.isfinite(alpha):
        raise typer.BadParameter(f"{alpha} is not a finite number", param_hint="--alpha")
    if not quiet:
        out.info(formula(alpha))
    result = run_merge(
        sft,
        aligned,
        output,
        alpha,
        dtype=dtype,
        device=device,
        max_shard_size=max_shard_size,
        force=force,
        allow_architecture_mismatch=allow_architecture_mismatch,
        strict=strict,
        progress=not quiet and not are_progress_bars_disabled(),
        warn=out.warning,
    )
    if not quiet:
        out.info(
            f"Merged {result.tensors} tensors ({result.extrapolated} extrapolated) on {result.device}: "
            f"{human_bytes(result.bytes_read)} read, {human_bytes(result.bytes_written)} written in "
            f"{len(result.shards)} shard(s), {result.seconds:.1f} s, {result.gb_per_s:.2f} GB/s"
        )
    if json:
        out.result_json(result.to_json())
    else:
        out.result(str(result.output))
