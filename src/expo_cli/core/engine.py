"""Where the arithmetic runs: on the CPU into the sink's buffers, or on a GPU through pinned staging.

The engine takes each block of both inputs once, computes θ_aligned + α·(θ_aligned − θ_sft) for every target into
the buffer that target's sink lends, probes it for inf/NaN, and hands it back. On a GPU, inputs are staged
through pinned memory, copies and the kernel are queued on one stream, and the result is copied into the sink's
(pinned) host buffer asynchronously: the sink waits on a CUDA event only when it reaches that block, so the host
keeps reading while the device computes. A sink whose buffers live on the device (model parameters) gets the
result directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..constants import CHUNK_ELEMENTS
from .extrapolate import Extrapolators, finite_probe
from .sinks import TensorSink
from .writer import TensorSpec


class ChunkEngine:
    def __init__(self, device: torch.device, chunk: int = CHUNK_ELEMENTS) -> None:
        self._extrapolators = Extrapolators()
        self.device = device
        self.cuda = device.type == "cuda"
        self.chunk_bytes = chunk * 8  # room for any dtype (float64 at most)
        if self.cuda:
            self._staging = [
                [torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)] for _ in range(2)
            ]
            self._staged: list[torch.cuda.Event | None] = [None, None]
            self._slot = 0
            self._gpu = [torch.empty(self.chunk_bytes, dtype=torch.uint8, device=device) for _ in range(3)]

    def extrapolate(
        self,
        sft: torch.Tensor,
        aligned: torch.Tensor,
        t: TensorSpec,
        start: int,
        stop: int,
        targets: Sequence[tuple[float, TensorSink]],
    ) -> list[torch.Tensor]:
        """Compute one block for each (α, sink) and hand it over; return finiteness probes (one per target).

        The inputs are read (and, on a GPU, copied to the device) once for all targets: a sweep reads each
        input block once.
        """
        if self.cuda:
            sft, aligned = self._to_device(sft, aligned)
        probes = []
        for alpha, sink in targets:
            out = sink.buffer(t, start, stop)
            result, ready = self._into(out, lambda res, a=alpha: self._extrapolators[a](sft, aligned, res))
            probes.append(finite_probe(result))
            sink.put(t, start, stop, out, ready)
        return probes

    def convert(self, aligned: torch.Tensor, t: TensorSpec, start: int, stop: int, sink: TensorSink) -> None:
        """A block copied unchanged but for its dtype (rounded once)."""
        out = sink.buffer(t, start, stop)
        out.copy_(aligned)
        sink.put(t, start, stop, out)

    def _into(self, out: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]):
        """Run `compute` into `out`, or on the device and then into `out` (a host buffer) asynchronously."""
        if not self.cuda or out.device.type == "cuda":
            return compute(out), None
        result = compute(self._gpu[2].view(out.dtype)[: out.numel()])
        out.copy_(result, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return result, done.synchronize

    def _to_device(self, *chunks: torch.Tensor) -> list[torch.Tensor]:
        """Copy host chunks into pinned staging (alternating slots), then to the GPU asynchronously."""
        slot, self._slot = self._slot, 1 - self._slot
        if self._staged[slot] is not None:
            self._staged[slot].synchronize()  # the copy that last used this slot has left it
        moved = []
        for i, chunk in enumerate(chunks):
            pinned = self._staging[slot][i].view(chunk.dtype)[: chunk.numel()].copy_(chunk)
            moved.append(self._gpu[i].view(chunk.dtype)[: chunk.numel()].copy_(pinned, non_blocking=True))
        event = torch.cuda.Event()
        event.record()
        self._staged[slot] = event
        return moved

    def finite(self, probes: Sequence[torch.Tensor]) -> bool:
        """Whether every block behind these probes was finite (one device sync per tensor)."""
        return bool(torch.isfinite(torch.cat(list(probes))).all())
