"""expo verify: recompute a merged checkpoint from its inputs and check every element and shard checksum.

Usage:
    expo verify ./zephyr-expo --sft ./zephyr-sft --aligned ./zephyr-dpo
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import _output as out
from ._options import AdapterStackOpt, AlignedOpt, BaseOpt, JsonOpt, QuietOpt, SftOpt, show_progress

VERIFY_EXAMPLES = [
    "expo verify ./zephyr-expo --sft ./zephyr-sft --aligned ./zephyr-dpo",
    "expo verify ./zephyr-expo --sft ./zephyr-sft --aligned ./zephyr-dpo --alpha 0.5 --json",
]


def verify(
    output: Annotated[str, typer.Argument(metavar="OUTPUT", help="The merged checkpoint folder to check.")],
    aligned: AlignedOpt,
    sft: SftOpt = None,
    base: BaseOpt = None,
    adapter_stack: AdapterStackOpt = None,
    alpha: Annotated[
        float | None,
        typer.Option("--alpha", metavar="ALPHA", help="α to check against (default: the one config.json records)."),
    ] = None,
    thorough: Annotated[
        bool,
        typer.Option(
            "--thorough",
            help="Check every element against float64, not only those whose bits differ "
            "from expo's own arithmetic (about ten times slower).",
        ),
    ] = False,
    quiet: QuietOpt = False,
    json: JsonOpt = False,
) -> None:
    """Recompute OUTPUT from --sft and --aligned; exit 1 if any tensor differs by more than one rounding step."""
    # the library loads when a command runs: --help stays fast
    from ..verification import SHOWN, VerifyFailed
    from ..verification import verify as run_verify

    result = run_verify(
        output,
        sft,
        aligned,
        alpha,
        progress=show_progress(quiet),
        thorough=thorough,
        base=base,
        adapter_stack=adapter_stack,
    )
    for problem in result.checksum_errors:
        out.warning(f"checksum: {problem}")
    for m in result.mismatches[:SHOWN]:
        detail = m.get("problem") or f"{m['elements']} elements off (max error {m['max_abs_error']:.3g})"
        out.warning(f"tensor {m['tensor']!r}: {detail}")
    if json:
        out.result_json(result.to_json())
    if not result.ok:
        raise VerifyFailed(
            f"{result.output}: {len(result.mismatches)} tensor(s) differ and {len(result.checksum_errors)} "
            f"checksum problem(s) at α={result.alpha:g}" + "".join(f"; {hint}" for hint in result.hints)
        )
    if not quiet:
        out.info(
            f"OK: {result.tensors} tensors, {result.elements} elements match α={result.alpha:g} "
            f"({result.seconds:.1f} s)"
        )
    if not json:
        out.result(str(result.output))
