"""Where the arithmetic runs: reused output buffers on the CPU, or pinned buffers and async copies on a GPU.

The engine hands each finished chunk to the writer with a callback that returns its buffer to the pool,
so a handful of chunk-sized buffers serve the whole model: memory does not grow with it. On a GPU, inputs
are staged through pinned memory, copies and the kernel are queued on one stream, and the writer waits on
a CUDA event only when it reaches that chunk, so the host keeps reading while the device computes.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence

import torch

from .constants import CHUNK_ELEMENTS
from .extrapolate import Extrapolator, finite_probe
from .writer import ShardStream

BUFFERS = 4  # output chunks in flight: one being computed, the others being written and hashed


class ChunkEngine:
    def __init__(self, device: torch.device, max_itemsize: int, chunk: int = CHUNK_ELEMENTS) -> None:
        self._extrapolators: dict[float, Extrapolator] = {}
        self.device = device
        self.cuda = device.type == "cuda"
        self.chunk_bytes = chunk * 8  # room for any dtype (float64 at most)
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(BUFFERS):
            self._free.put(torch.empty(chunk * max_itemsize, dtype=torch.uint8, pin_memory=self.cuda))
        if self.cuda:
            self._staging = [[torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
                             for _ in range(2)]  # fmt: skip
            self._staged: list[torch.cuda.Event | None] = [None, None]
            self._slot = 0
            self._gpu = [torch.empty(self.chunk_bytes, dtype=torch.uint8, device=device) for _ in range(3)]

    def _take(self, dtype: torch.dtype, numel: int, stream: ShardStream) -> tuple[torch.Tensor, torch.Tensor]:
        """A free output buffer; waits for the writer to return one (and fails if the writer failed)."""
        while True:
            try:
                buf = self._free.get(timeout=0.5)
                return buf, buf.view(dtype)[:numel]
            except queue.Empty:
                stream.check()

    def _hand_over(self, buf: torch.Tensor, out: torch.Tensor, stream: ShardStream, ready=None) -> None:  # noqa: ANN001
        data = memoryview(buf[: out.numel() * out.element_size()].numpy())
        stream.write(data, release=lambda: self._free.put(buf), ready=ready)

    def _extrapolator(self, alpha: float) -> Extrapolator:
        if alpha not in self._extrapolators:
            self._extrapolators[alpha] = Extrapolator(alpha)
        return self._extrapolators[alpha]

    def extrapolate(
        self,
        sft: torch.Tensor,
        aligned: torch.Tensor,
        dtype: torch.dtype,
        targets: Sequence[tuple[float, ShardStream]],
    ) -> list[torch.Tensor]:
        """Queue θ_aligned + α·(θ_aligned − θ_sft) of one chunk for each (α, stream); return finiteness probes.

        The inputs are read (and, on a GPU, copied to the device) once for all targets: a sweep reads each
        input tensor once.
        """
        if self.cuda:
            sft, aligned = self._to_device(sft, aligned)
        probes = []
        for alpha, stream in targets:
            buf, out = self._take(dtype, aligned.numel(), stream)
            result = out if not self.cuda else self._gpu[2].view(dtype)[: out.numel()]
            self._extrapolator(alpha)(sft, aligned, result)
            probes.append(finite_probe(result))
            ready = None
            if self.cuda:
                out.copy_(result, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
                ready = done.synchronize
            self._hand_over(buf, out, stream, ready=ready)
        return probes

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

    def convert(self, aligned: torch.Tensor, dtype: torch.dtype, stream: ShardStream) -> None:
        """Queue a chunk copied unchanged but for its dtype (rounded once)."""
        buf, out = self._take(dtype, aligned.numel(), stream)
        out.copy_(aligned)
        self._hand_over(buf, out, stream)

    def finite(self, probes: Sequence[torch.Tensor]) -> bool:
        """Whether every chunk behind these probes was finite (one device sync per tensor)."""
        return bool(torch.isfinite(torch.cat(list(probes))).all())
