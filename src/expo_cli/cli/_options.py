"""Options shared by several commands, defined once."""

from __future__ import annotations

from typing import Annotated

import typer

from ..constants import DEFAULT_MAX_SHARD_SIZE

SftOpt = Annotated[str, typer.Option("--sft", help="The SFT checkpoint the aligned model was trained from (θ_sft).")]
AlignedOpt = Annotated[
    str, typer.Option("--aligned", help="The aligned (DPO/RLHF) checkpoint (θ_aligned); the output mirrors it.")
]
AlphaOpt = Annotated[
    float,
    typer.Option(
        "--alpha",
        help="The paper's α: 0 = aligned model unchanged, -1 = SFT model; 0.1-0.5 typical for fully trained "
        "models, 1-25 for under-trained ones.",
    ),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype", help="bfloat16, float16 or float32 for every floating tensor (default: the aligned dtype)."
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or auto (CUDA when available).")]
MaxShardSizeOpt = Annotated[
    str,
    typer.Option("--max-shard-size", help=f"Largest output shard, decimal units (default {DEFAULT_MAX_SHARD_SIZE})."),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing non-empty output folder.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar, formula or summary on stderr (warnings still show).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Treat inf/NaN already present in an input as an error.")]
AllowArchOpt = Annotated[
    bool,
    typer.Option("--allow-architecture-mismatch", help="Skip the config.json model_type/architectures check."),
]
