"""The streaming core: one walk over (tensor, block) shared by merge, verify and inspect, and the merge loop that
drives any number of sinks from it.

`walk` yields every tensor's row blocks in order and asks the sources to read the next block ahead. Each block
splits at `shared_stop`: elements before it are extrapolated, those after it (a grown vocabulary's new rows, or a
tensor with no SFT counterpart) are copied from the aligned model. `stream` reads each block of both inputs once
and hands every target (α per tensor, and a sink) its result: raw bytes where the result is bit for bit an input
(α = 0 or −1 at the input's dtype), otherwise the engine's arithmetic into the sink's buffer, with one finiteness
check per tensor and target.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..constants import CHUNK_ELEMENTS
from ..errors import NonFiniteError
from .pairing import TensorPair
from .sinks import TensorSink
from .sources import TensorSource, blocks, dtype_name, itemsize

if TYPE_CHECKING:
    from .engine import ChunkEngine


@dataclass(frozen=True)
class Block:
    """Elements [start, stop) of one tensor: [start, shared_stop) extrapolated, [shared_stop, stop) copied."""

    tensor: TensorPair
    start: int
    stop: int
    shared_stop: int
    last: bool  # the tensor's last block


def tensor_blocks(t: TensorPair, limit: int) -> list[tuple[int, int]]:
    return list(blocks(t.numel, t.aligned.row_numel, limit))


def walk(
    tensors: Sequence[TensorPair], sft: TensorSource, aligned: TensorSource, limit: int | None = None
) -> Iterator[Block]:
    """Every block of every tensor, in order, each announced to the sources ahead of its turn: one block ahead, or
    as many as a source asks for (`read_ahead`: a network source keeps several requests in flight)."""
    limit = limit or CHUNK_ELEMENTS
    depth = max(1, getattr(sft, "read_ahead", 1), getattr(aligned, "read_ahead", 1))
    upcoming = (
        (t, start, stop, i + 1 == len(spans))
        for t in tensors
        for spans in (tensor_blocks(t, limit),)
        for i, (start, stop) in enumerate(spans)
    )
    first = next(upcoming, None)  # read at once: not announced
    window: deque[tuple[TensorPair, int, int, bool]] = deque([first] if first is not None else [])
    while window:
        while len(window) <= depth and (item := next(upcoming, None)) is not None:
            _prefetch(item[0], sft, aligned, item[1], item[2])  # `depth` blocks behind this one, announced
            window.append(item)
        t, start, stop, last = window.popleft()
        shared_stop = min(stop, t.shared) if t.sft is not None else start
        yield Block(t, start, stop, max(start, shared_stop), last)


def _prefetch(t: TensorPair, sft: TensorSource, aligned: TensorSource, start: int, stop: int) -> None:
    aligned.prefetch(t.aligned, start, stop)
    if t.sft is not None and start < t.shared:
        sft.prefetch(t.sft, start, min(stop, t.shared))


@dataclass
class Target:
    """One output of a run: the α of every tensor, and the sink its blocks go to."""

    alphas: dict[str, float]
    sink: TensorSink


def stream(
    tensors: Sequence[TensorPair],
    sft: TensorSource,
    aligned: TensorSource,
    targets: Sequence[Target],
    engine: ChunkEngine,
    progress: bool,
    nonfinite: Callable[[TensorPair, float], None],
    limit: int | None = None,
    bar: Any = None,
    status: Callable[[], str] | None = None,
) -> None:
    """Read every block of both inputs once and hand every target its result.

    `nonfinite(t, α)` is called for a tensor whose result at α holds inf/NaN (it explains, warns or raises).
    `bar`: a progress bar shared with other streams of the run (else one is made, shown when `progress`).
    `status()`: more for the bar to show after each tensor (how fast the network reads and uploads).
    """
    total = sum(t.nbytes for t in tensors) * len(targets)
    probes: list[list] = [[] for _ in targets]
    shared = bar is not None
    with nullcontext(bar) if shared else progress_bar(total, progress) as bar:
        done = 0
        for block in walk(tensors, sft, aligned, limit):
            t, start, stop, shared_stop = block.tensor, block.start, block.stop, block.shared_stop
            if shared_stop > start:
                computed = []
                for i, target in enumerate(targets):
                    alpha = target.alphas[t.name]
                    if alpha == 0 and t.out_dtype == t.aligned.dtype:  # bit for bit the aligned tensor
                        target.sink.put(t, start, shared_stop, aligned.raw(t.aligned, start, shared_stop))
                    elif alpha == -1 and t.out_dtype == t.sft.dtype:  # bit for bit the SFT tensor
                        target.sink.put(t, start, shared_stop, sft.raw(t.sft, start, shared_stop))
                    else:
                        computed.append((i, alpha, target.sink))
                if computed:
                    found = engine.extrapolate(
                        sft.flat(t.sft, start, shared_stop),
                        aligned.flat(t.aligned, start, shared_stop),
                        t,
                        start,
                        shared_stop,
                        [(alpha, sink) for _, alpha, sink in computed],
                    )
                    for (i, _, _), probe in zip(computed, found, strict=True):
                        probes[i].append(probe)
            if stop > shared_stop:  # copied unchanged: non-floating tensors, grown vocabulary rows
                for target in targets:
                    if t.out_dtype == t.aligned.dtype:
                        target.sink.put(t, shared_stop, stop, aligned.raw(t.aligned, shared_stop, stop))
                    else:
                        engine.convert(aligned.flat(t.aligned, shared_stop, stop), t, shared_stop, stop, target.sink)
            bar.update((stop - start) * itemsize(t.out_dtype) * len(targets))
            if block.last:
                for i, target in enumerate(targets):
                    if probes[i] and not engine.finite(probes[i]):
                        nonfinite(t, target.alphas[t.name])
                    probes[i] = []
                done += 1
                # several streams share a bar: their counts would overwrite each other
                shown = [] if shared else [f"{done}/{len(tensors)} tensors"]
                if status is not None and (more := status()):
                    shown.append(more)
                if shown:
                    bar.set_postfix_str(", ".join(shown), refresh=False)


def progress_bar(total: int, shown: bool) -> Any:
    """The merge's bar on stderr, in bytes written."""
    from huggingface_hub.utils import tqdm  # the Hub client loads when the Hub is used

    return tqdm(
        total=total, unit="B", unit_scale=True, desc="Merging", disable=not shown, file=sys.stderr, dynamic_ncols=True
    )


def explain_nonfinite(
    t: TensorPair, sft: TensorSource, aligned: TensorSource, alpha: float, *, strict: bool, warn: Callable[[str], None]
) -> None:
    """Explain an inf/NaN result: inherited from an input (a warning) or made by the arithmetic (an error)."""
    import torch  # torch loads on first use, not with the package

    assert t.sft is not None
    for role, ckpt, info in (("aligned", aligned, t.aligned), ("sft", sft, t.sft)):
        for start, end in blocks(t.shared, t.aligned.row_numel, CHUNK_ELEMENTS):
            if not bool(torch.isfinite(ckpt.flat(info, start, end)).all()):
                message = f"tensor {t.name!r}: the {role} input already holds inf/NaN, so the output does too"
                if strict:
                    raise NonFiniteError(f"{message} (--strict)")
                warn(message)
                return
    hint = "; try --dtype float32 or a smaller --alpha" if t.out_dtype != "F32" else "; try a smaller --alpha"
    raise NonFiniteError(
        f"tensor {t.name!r}: α={alpha:g} overflows {dtype_name(t.out_dtype)} (inf/NaN in the result){hint}"
    )
