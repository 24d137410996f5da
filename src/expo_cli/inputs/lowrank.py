"""`--delta-rank r`: the aligned model with each matrix's update replaced by its best rank-r approximation.

For a 2-D floating tensor, Δ = θ_aligned − θ_sft (over the rows both have) is replaced by Δ_r = U_r·S_r·V_rᵀ, its
r leading singular triplets, and the source serves θ_sft + Δ_r (kept wide, so the output is rounded once, by the
engine): ExPO then gives θ_sft + (1 + α)·Δ_r. Vectors (norms, biases), tensors with no SFT counterpart, rows a
grown vocabulary added and tensors that are not floating are the aligned model's own.

A matrix is computed whole when its first block is asked for and kept until the next tensor (per thread: a merge
writes several shards at once), so memory grows with the largest matrix (about five float32 copies of it at the
peak: the SFT matrix, Δ, the SVD's factors and workspace, the result), never with the model. Matrices whose
smaller side is at most EXACT_UP_TO get an exact SVD; larger ones a randomised one (range finder with
POWER_ITERATIONS power iterations and OVERSAMPLE extra columns, seeded by the tensor's name, so every run and every
job-array part computes the same bits).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.pairing import TensorPair
from ..core.sources import TensorInfo, TensorSource, compute_dtype, rounded_bytes, torch_dtype

if TYPE_CHECKING:
    import torch

EXACT_UP_TO = 1024
OVERSAMPLE = 10
POWER_ITERATIONS = 6


def low_rank(delta: torch.Tensor, rank: int, seed: int) -> tuple[torch.Tensor, float]:
    """The best rank-`rank` approximation of a matrix, and the share of its squared Frobenius norm it keeps."""
    if rank >= min(delta.shape):
        return delta.clone(), 1.0
    u, s, vh, kept = _leading(delta, rank, seed)
    return (u * s) @ vh, kept


def energy_kept(delta: torch.Tensor, rank: int, seed: int) -> float:
    """The share of a matrix's squared Frobenius norm that its best rank-`rank` approximation keeps."""
    return 1.0 if rank >= min(delta.shape) else _leading(delta, rank, seed)[3]


def _leading(delta: torch.Tensor, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The `rank` leading singular triplets (exact up to EXACT_UP_TO, else randomised) and the share they keep."""
    import torch  # torch loads on first use, not with the package

    total = float(torch.linalg.vector_norm(delta, dtype=torch.float64) ** 2)
    if min(delta.shape) <= EXACT_UP_TO:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    else:
        u, s, vh = _randomised_svd(delta, rank + OVERSAMPLE, seed)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    kept = float(torch.sum(s.double() ** 2))
    return u, s, vh, (kept / total if total > 0 else 1.0)


def _randomised_svd(matrix: torch.Tensor, columns: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Halko, Martinsson and Tropp's range finder with power iterations (re-orthonormalised each time)."""
    import torch  # torch loads on first use, not with the package

    generator = torch.Generator().manual_seed(seed)
    probe = torch.randn(matrix.shape[1], columns, generator=generator, dtype=matrix.dtype)
    basis, _ = torch.linalg.qr(matrix @ probe)
    for _ in range(POWER_ITERATIONS):
        basis, _ = torch.linalg.qr(matrix.T @ basis)
        basis, _ = torch.linalg.qr(matrix @ basis)
    u, s, vh = torch.linalg.svd(basis.T @ matrix, full_matrices=False)
    return basis @ u, s, vh


def low_ranked(t: TensorPair) -> bool:
    """Whether --delta-rank replaces this tensor's update: a floating matrix with an SFT counterpart."""
    return t.sft is not None and len(t.shape) == 2 and t.aligned.is_float


def update_of(sft: TensorSource, aligned: TensorSource, t: TensorPair) -> tuple[torch.Tensor, torch.Tensor]:
    """A matrix's SFT values and its update Δ over the rows both have, whole and wide (float32, or float64)."""
    assert t.sft is not None
    wide = compute_dtype(torch_dtype(t.sft.dtype), torch_dtype(t.aligned.dtype))
    columns = t.shape[1]
    before = sft.flat(t.sft, 0, t.shared).to(wide).view(-1, columns)
    return before, aligned.flat(t.aligned, 0, t.shared).to(wide).view(-1, columns) - before


def seed_of(name: str) -> int:
    """The randomised SVD's seed for a tensor: the same in every run and process."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") & (2**63 - 1)


class LowRankUpdate:
    """θ_sft + (θ_aligned − θ_sft)_r under the aligned model's names, shapes and dtypes."""

    def __init__(self, sft: TensorSource, aligned: TensorSource, rank: int, tensors: Sequence[TensorPair]) -> None:
        self.sft = sft
        self.aligned = aligned
        self.rank = rank
        self.path: Path = aligned.path
        self.config: dict[str, Any] = aligned.config
        self.tensors = aligned.tensors
        self.pairs = {t.name: t for t in tensors if low_ranked(t)}
        self.energy: dict[str, float] = {}  # tensor -> share of its update's squared norm kept
        self._kept = threading.local()

    @property
    def readable(self) -> bool:
        return self.aligned.readable

    def __enter__(self) -> LowRankUpdate:
        self.aligned.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._kept.matrix = None
        self.aligned.__exit__(*exc)

    def flat(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        pair = self.pairs.get(info.name)
        if pair is None or start >= pair.shared:
            return self.aligned.flat(info, start, stop)
        import torch  # torch loads on first use, not with the package

        values = self._matrix(pair)[start : min(stop, pair.shared)]
        if stop > pair.shared:  # rows a grown vocabulary added: the aligned model's
            grown = self.aligned.flat(info, pair.shared, stop).to(values.dtype)
            values = torch.cat([values, grown])
        return values

    def _matrix(self, pair: TensorPair) -> torch.Tensor:
        """θ_sft + Δ_r over the shared rows, flat and wide; computed once per tensor (and thread)."""
        kept = getattr(self._kept, "matrix", None)
        if kept is not None and kept[0] == pair.name:
            return kept[1]
        sft, delta = update_of(self.sft, self.aligned, pair)
        approximation, energy = low_rank(delta, self.rank, seed_of(pair.name))
        del delta
        result = approximation.add_(sft).reshape(-1)
        self.energy[pair.name] = energy
        self._kept.matrix = (pair.name, result)
        return result

    def raw(self, info: TensorInfo, start: int, stop: int) -> memoryview:
        if info.name not in self.pairs:
            return self.aligned.raw(info, start, stop)
        return rounded_bytes(self.flat(info, start, stop), info.dtype)

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        self.aligned.prefetch(info, start, stop)
