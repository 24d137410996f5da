"""expo inspect: what alignment changed, per tensor and per layer, and how much of α survives rounding.

Usage:
    expo inspect --sft ./zephyr-sft --aligned ./zephyr-dpo --alpha 0.5 --plot change.png
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..alpha import check_alpha
from . import _output as out
from ._options import (
    AdapterStackOpt,
    AlignedOpt,
    AllowArchOpt,
    BaseOpt,
    DeltaRankOpt,
    DtypeOpt,
    JsonOpt,
    QuietOpt,
    SftOpt,
    show_progress,
)

INSPECT_EXAMPLES = [
    "expo inspect --sft ./zephyr-sft --aligned ./zephyr-dpo",
    "expo inspect --sft ./zephyr-sft --aligned ./zephyr-dpo --alpha 2.5 --dtype bfloat16 --plot change.png",
    "expo inspect --sft ./zephyr-sft --aligned ./zephyr-dpo --json > report.json",
]


def inspect(
    aligned: AlignedOpt,
    sft: SftOpt = None,
    base: BaseOpt = None,
    adapter_stack: AdapterStackOpt = None,
    alpha: Annotated[
        float, typer.Option("--alpha", metavar="ALPHA", help="α whose survival after rounding to report.")
    ] = 0.5,
    dtype: DtypeOpt = None,
    plot: Annotated[
        str | None, typer.Option("--plot", metavar="FILE.png", help="Draw the per-layer change (needs matplotlib).")
    ] = None,
    top: Annotated[int, typer.Option("--top", metavar="N", help="How many most-changed tensors to list.")] = 10,
    delta_rank: DeltaRankOpt = None,
    allow_architecture_mismatch: AllowArchOpt = False,
    quiet: QuietOpt = False,
    json: JsonOpt = False,
) -> None:
    """Report ‖Δ‖/‖θ_sft‖, cosine and max |Δ| per tensor and layer; write nothing (but --plot)."""
    # the library loads when a command runs: --help stays fast
    from ..inspection import inspect as run_inspect
    from ..inspection import percent
    from ..inspection import plot as draw

    result = run_inspect(
        sft,
        aligned,
        check_alpha(alpha),
        dtype=dtype,
        progress=show_progress(quiet),
        allow_architecture_mismatch=allow_architecture_mismatch,
        base=base,
        adapter_stack=adapter_stack,
        delta_rank=delta_rank,
    )
    for warning in result.warnings:
        out.warning(warning)
    if plot:
        bars = draw(result, plot)
        if not quiet:
            out.info(f"Plotted {bars} bars to {plot}")
    if json:
        out.result_json(result.to_json())
        return
    kept = f"  {f'kept at rank {delta_rank}':>15}" if delta_rank is not None else ""
    out.result(
        f"{'layer':>6}  {'module':<10}  {'tensors':>7}  {'‖Δ‖/‖θ_sft‖':>12}  {'share of ‖Δ‖²':>13}  "
        f"{f'survives at α={alpha:g}':>17}{kept}"
    )
    for g in result.groups:
        layer = "-" if g.layer is None else str(g.layer)
        share = "" if delta_rank is None else f"  {'-' if g.energy_kept is None else percent(g.energy_kept):>15}"
        out.result(
            f"{layer:>6}  {g.kind:<10}  {g.tensors:>7}  {percent(g.relative_change):>12}  "
            f"{percent(g.share_of_change):>13}  {percent(g.survives):>17}{share}"
        )
    out.result("")
    out.result(f"Most changed tensors (survives = share of elements that differ from aligned at α={alpha:g}):")
    for t in sorted(result.tensors, key=lambda t: t.relative_change, reverse=True)[:top]:
        out.result(
            f"  {t.name}: ‖Δ‖/‖θ_sft‖ {percent(t.relative_change)}, cosine {t.cosine:.6f}, "
            f"max |Δ| {t.max_abs_delta:.3g}, survives {percent(t.survives)}"
        )
    out.result("")
    out.result(result.summary)
