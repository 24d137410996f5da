"""The arithmetic: θ_expo = θ_aligned + α·(θ_aligned − θ_sft), on flat chunks, rounded once.

bfloat16/float16 (same dtype in and out): `torch.lerp(sft, aligned, 1 + α)` is θ_sft + (1+α)·(θ_aligned −
θ_sft) in one fused pass with float32 internal math and a single rounding to the output, no upcast copies.
float32/float64, and mixed dtypes: the difference goes to a scratch buffer of the compute dtype (float32, or
float64 when any side is float64), then θ_aligned + α·Δ. Not lerp there: its 1 − (1+α) loses α's low bits
when 1+α is rounded, which costs float32 outputs a unit in the last place.
"""

from __future__ import annotations

import torch

from .sources import compute_dtype


class Extrapolator:
    """Computes chunks into caller-provided output buffers, reusing its scratch memory between calls."""

    def __init__(self, alpha: float) -> None:
        self.alpha = float(alpha)
        self.weight = 1.0 + self.alpha
        self._scratch: dict[tuple[torch.dtype, torch.device, int], torch.Tensor] = {}

    def _buffer(self, slot: int, dtype: torch.dtype, device: torch.device, numel: int) -> torch.Tensor:
        key = (dtype, device, slot)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < numel:
            buf = self._scratch[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel]

    def __call__(self, sft: torch.Tensor, aligned: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write the extrapolation of two chunks into `out` (all of one shape; flat, or strided views of a block
        of rows and columns) and return it."""
        if sft.dtype == aligned.dtype == out.dtype and out.dtype in (torch.bfloat16, torch.float16):
            return torch.lerp(sft, aligned, self.weight, out=out)
        wide = compute_dtype(sft.dtype, aligned.dtype, out.dtype)
        n, shape = out.numel(), out.shape
        if aligned.dtype != wide:
            aligned = self._buffer(1, wide, out.device, n).view(shape).copy_(aligned)
        delta = torch.sub(aligned, sft, out=self._buffer(0, wide, out.device, n).view(shape))  # sft widened exactly
        if out.dtype == wide:
            return torch.add(aligned, delta, alpha=self.alpha, out=out)
        return out.copy_(torch.add(aligned, delta, alpha=self.alpha, out=delta))


class Extrapolators(dict[float, Extrapolator]):
    """One `Extrapolator` per α, made on first use, so that each keeps its scratch buffers from chunk to chunk."""

    def __missing__(self, alpha: float) -> Extrapolator:
        made = self[alpha] = Extrapolator(alpha)
        return made


def finite_probe(chunk: torch.Tensor) -> torch.Tensor:
    """The chunk's (min, max): both finite exactly when every element is, since NaN and ±inf propagate.

    One pass with no temporary (about half the cost of the arithmetic; a float64 sum costs 20 times it).
    It stays on the chunk's device, so a GPU run checks once per tensor instead of syncing per chunk.
    """
    return torch.stack(torch.aminmax(chunk))
