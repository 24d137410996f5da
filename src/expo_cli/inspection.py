"""`expo inspect`: what alignment changed, tensor by tensor and layer by layer, before trusting a merge.

Both checkpoints are streamed with the same readers and pairing as a merge. Per tensor: the relative change
‖Δ‖/‖θ_sft‖, cosine(θ_sft, θ_aligned), max |Δ|, and how much of an extrapolation at α survives rounding to the
output dtype (the share of elements whose rounded result differs from the aligned value): alignment deltas
are often near bfloat16's resolution, and then `--dtype float32` is what keeps the extrapolation.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .core.pairing import IDENTICAL, TensorPair, pair_tensors
from .core.sources import dtype_code, dtype_name, itemsize, torch_dtype
from .core.streaming import walk
from .inputs.lowrank import energy_kept, low_ranked, seed_of, update_of
from .inputs.resolve import resolve_inputs
from .plotting import pyplot, save_png
from .trajectory import check_delta_rank

LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
KINDS = (  # first match wins: attention before MLP, since GPT-2 has c_proj in both
    ("norms", re.compile(r"norm|(^|\.)ln_\w*")),
    ("attention", re.compile(r"attn|attention|(^|\.)(q|k|v|o)_proj|query|key|value")),
    ("mlp", re.compile(r"mlp|ffn|feed_forward|(gate|up|down)_proj|(^|\.)c_fc|(^|\.)fc\d|experts")),
    ("embeddings", re.compile(r"embed|wte|wpe|lm_head|embed_out|(^|\.)output\.weight")),
)
LARGE_CHANGE = 0.2  # relative change beyond which the pair does not look like SFT -> aligned
LOW_SURVIVAL = 0.5


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def layer_of(name: str) -> int | None:
    match = LAYER.search(name)
    return int(match.group(1)) if match else None


@dataclass
class TensorStats:
    name: str
    layer: int | None
    kind: str
    elements: int
    sft_norm: float
    delta_norm: float
    cosine: float
    max_abs_delta: float
    survives: float  # share of elements whose extrapolation at α, rounded to the output dtype, differs from aligned
    matrix: bool = True  # two or more dimensions: a weight matrix, not a norm weight or bias vector
    energy_kept: float | None = None  # --delta-rank: the share of ‖Δ‖² its best rank-r approximation keeps

    @property
    def relative_change(self) -> float:
        return self.delta_norm / self.sft_norm if self.sft_norm else (math.inf if self.delta_norm else 0.0)


@dataclass
class GroupStats:
    layer: int | None
    kind: str
    tensors: int
    relative_change: float
    share_of_change: float  # of ‖Δ‖² over the whole model
    survives: float  # share of its elements that still differ from aligned at α after rounding
    energy_kept: float | None = None  # --delta-rank: the share of its matrices' ‖Δ‖² rank r keeps


@dataclass
class InspectResult:
    alpha: float
    dtype: str
    relative_change: float  # over every tensor: norm weights near 1 weigh heavily in ‖θ_sft‖ and barely move
    matrix_change: float  # over the weight matrices: what alignment moves, and what the warning judges
    survives: float
    tensors: list[TensorStats]
    groups: list[GroupStats]
    summary: str
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for stats, row in zip(self.tensors, data["tensors"], strict=True):
            row["relative_change"] = stats.relative_change
        return data


def inspect(
    sft: str | Path | None,
    aligned: str | Path,
    alpha: float = 0.5,
    *,
    dtype: str | None = None,
    progress: bool = True,
    allow_architecture_mismatch: bool = False,
    token: str | None = None,
    base: str | None = None,
    adapter_stack: str | None = None,
    delta_rank: int | None = None,
) -> InspectResult:
    """Compare two checkpoints (local folders or Hub repo ids) tensor by tensor; nothing is written. With
    `delta_rank`, also the share of each matrix's update that its best approximation of that rank keeps."""
    check_delta_rank(delta_rank)
    import torch  # torch loads on first use, not with the package
    from huggingface_hub.utils import tqdm  # the Hub client loads when the Hub is used

    from .core.extrapolate import Extrapolator  # imports torch

    out_code = dtype_code(dtype)
    sft_ckpt, aligned_ckpt = resolve_inputs(
        sft,
        aligned,
        token=token,
        base=base,
        adapter_stack=adapter_stack,
        allow_architecture_mismatch=allow_architecture_mismatch,
    )
    pairing = pair_tensors(sft_ckpt, aligned_ckpt, out_code)
    extrapolate = Extrapolator(alpha)
    stats: list[TensorStats] = []
    compared = [t for t in pairing.tensors if t.sft is not None]
    total = sum(t.shared * itemsize(t.aligned.dtype) for t in compared)
    with (
        sft_ckpt,
        aligned_ckpt,
        tqdm(total=total, unit="B", unit_scale=True, desc="Inspecting", disable=not progress, file=sys.stderr) as bar,
    ):
        sums, rounded = _Sums(), {}
        for block in walk(compared, sft_ckpt, aligned_ckpt):
            t, start, stop = block.tensor, block.start, block.shared_stop
            if stop > start:  # grown rows have no SFT counterpart: not part of the change
                s_raw, a_raw = sft_ckpt.flat(t.sft, start, stop), aligned_ckpt.flat(t.aligned, start, stop)
                rounding = torch_dtype(t.out_dtype)  # not `dtype`: the summary names the user's --dtype
                if rounded.get(rounding) is None or rounded[rounding].numel() < stop - start:
                    rounded[rounding] = torch.empty(stop - start, dtype=rounding)
                sums.add(s_raw, a_raw, extrapolate(s_raw, a_raw, rounded[rounding][: stop - start]))
                bar.update((stop - start) * itemsize(t.aligned.dtype))
            if block.last:
                stats.append(sums.stats(t))
                if delta_rank is not None and low_ranked(t):
                    delta = update_of(sft_ckpt, aligned_ckpt, t)[1]
                    stats[-1].energy_kept = energy_kept(delta, delta_rank, seed_of(t.name))
    return _summarise(stats, alpha, dtype_name(out_code) if out_code else pairing.dominant_dtype() or "float32")


class _Sums:
    """One tensor's statistics, block by block: each block converted to float64 once (into reused buffers), its
    sums taken as float64 dot products, and the blocks' sums added in float64; `stats` reports and starts anew."""

    def __init__(self) -> None:
        self._scratch: list = []
        self._reset()

    def _reset(self) -> None:
        self.ss = self.dd = self.aa = self.sa = self.max_delta = 0.0
        self.changed = 0

    def _wide(self, slot: int, n: int):
        import torch  # torch loads on first use, not with the package

        while len(self._scratch) <= slot:
            self._scratch.append(torch.empty(0, dtype=torch.float64))
        if self._scratch[slot].numel() < n:
            self._scratch[slot] = torch.empty(n, dtype=torch.float64)
        return self._scratch[slot][:n]

    def add(self, s_raw, a_raw, rounded) -> None:
        import torch  # torch loads on first use, not with the package

        n = s_raw.numel()
        s, a = self._wide(0, n).copy_(s_raw), self._wide(1, n).copy_(a_raw)
        d = torch.sub(a, s, out=self._wide(2, n))
        self.ss += float(torch.dot(s, s))
        self.aa += float(torch.dot(a, a))
        self.sa += float(torch.dot(s, a))
        self.dd += float(torch.dot(d, d))
        low, high = torch.aminmax(d)
        self.max_delta = max(self.max_delta, -float(low), float(high))
        same = a_raw if a_raw.dtype == rounded.dtype else a_raw.to(rounded.dtype)
        self.changed += int(torch.count_nonzero(torch.ne(rounded, same)))

    def stats(self, t: TensorPair) -> TensorStats:
        cosine = self.sa / math.sqrt(self.ss * self.aa) if self.ss and self.aa else 1.0
        result = TensorStats(
            t.name,
            layer_of(t.name),
            kind_of(t.name),
            t.shared,
            math.sqrt(self.ss),
            math.sqrt(self.dd),
            cosine,
            self.max_delta,
            self.changed / t.shared if t.shared else 0.0,
            len(t.aligned.shape) >= 2,
        )
        self._reset()
        return result


def _relative(stats: list[TensorStats]) -> float:
    """‖Δ‖/‖θ_sft‖ over several tensors together."""
    ss = sum(s.sft_norm**2 for s in stats)
    return math.sqrt(sum(s.delta_norm**2 for s in stats) / ss) if ss else 0.0


def _survives(stats: list[TensorStats]) -> float:
    elements = sum(s.elements for s in stats)
    return sum(s.survives * s.elements for s in stats) / elements if elements else 0.0


def _kept(stats: list[TensorStats]) -> float | None:
    """The share of these tensors' ‖Δ‖² that --delta-rank keeps (None without it, or without matrices)."""
    measured = [s for s in stats if s.energy_kept is not None]
    total = sum(s.delta_norm**2 for s in measured)
    if not measured:
        return None
    return sum(s.energy_kept * s.delta_norm**2 for s in measured) / total if total else 1.0


def _summarise(stats: list[TensorStats], alpha: float, dtype: str) -> InspectResult:
    total_dd = sum(s.delta_norm**2 for s in stats)
    relative = _relative(stats)
    matrices = [s for s in stats if s.matrix]
    matrix_change = _relative(matrices) if matrices else relative
    survives = _survives(stats)
    grouped: dict[tuple[int | None, str], list[TensorStats]] = {}
    for s in stats:
        grouped.setdefault((s.layer, s.kind), []).append(s)
    ordered = sorted(grouped.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0, kv[0][1]))
    groups = [
        GroupStats(
            layer,
            kind,
            len(members),
            _relative(members),
            sum(m.delta_norm**2 for m in members) / total_dd if total_dd else 0.0,
            _survives(members),
            _kept(members),
        )
        for (layer, kind), members in ordered
    ]
    warnings = []
    if total_dd == 0:
        warnings.append(IDENTICAL)
    elif matrix_change > LARGE_CHANGE:
        warnings.append(
            f"alignment changed the weight matrices by {percent(matrix_change)} (‖Δ‖/‖θ_sft‖), far more than "
            "DPO/RLHF usually does: --sft may not be the checkpoint --aligned was trained from"
        )
    if total_dd and survives < LOW_SURVIVAL and dtype != "float32":
        warnings.append(
            f"at α={alpha:g} only {percent(survives)} of the elements differ from the aligned model after rounding "
            f"to {dtype}: the extrapolation is mostly lost; consider --dtype float32"
        )
    top = max(groups, key=lambda g: g.share_of_change, default=None)
    where = ""
    if top is not None and total_dd:
        place = f"layer {top.layer} {top.kind}" if top.layer is not None else top.kind
        where = f"; the largest share is in {place} ({percent(top.share_of_change)} of ‖Δ‖²)"
    vectors = len(stats) - len(matrices)
    whole = (
        f", the whole model by {percent(relative)} (its {vectors} vectors, norm weights near 1, weigh in ‖θ_sft‖ "
        "and barely move)"
        if matrices and vectors
        else ""
    )
    summary = (
        f"Alignment moved the weight matrices by {percent(matrix_change)} (‖Δ‖/‖θ_sft‖ over {len(matrices)} "
        f"tensors){whole}{where}; at α={alpha:g}, {percent(survives)} of the elements change in {dtype}."
    )
    return InspectResult(alpha, dtype, relative, matrix_change, survives, stats, groups, summary, warnings)


def percent(share: float) -> str:
    """A share as a percentage to three significant digits: 50.0%, 0.953%, 0.00123%, 100%."""
    return f"{100 * share:#.3g}".rstrip(".") + "%"


def plot(result: InspectResult, path: str | Path) -> int:
    """Draw, per layer and module kind, what alignment changed and how much of the extrapolation at α survives
    rounding to the output dtype; return how many bars (in each panel)."""
    plt = pyplot()
    kinds = [k for k, _ in KINDS] + ["other"]
    present = [k for k in kinds if any(g.kind == k for g in result.groups)]
    columns = sorted({g.layer for g in result.groups if g.layer is not None})
    labels = [str(layer) for layer in columns] + (["other"] if any(g.layer is None for g in result.groups) else [])
    index = {layer: i for i, layer in enumerate(columns)}
    width = 0.8 / max(len(present), 1)
    fig, (change, survival) = plt.subplots(
        2, 1, sharex=True, figsize=(max(7, 0.5 * len(labels) * max(len(present), 1) + 2), 6)
    )
    bars = 0
    for k, kind in enumerate(present):
        members = [g for g in result.groups if g.kind == kind]
        xs = [
            (index[g.layer] if g.layer is not None else len(columns)) + (k - (len(present) - 1) / 2) * width
            for g in members
        ]
        change.bar(xs, [100 * g.relative_change for g in members], width=width, label=kind, color=f"C{k}")
        survival.bar(xs, [100 * g.survives for g in members], width=width, color=f"C{k}")
        bars += len(members)
    change.set_ylabel("‖Δ‖ / ‖θ_sft‖ (%)")
    change.set_title(f"What alignment changed: weight matrices {percent(result.matrix_change)}")
    survival.set_ylabel(f"survives in {result.dtype} (%)")
    survival.set_ylim(0, 105)
    survival.set_title(
        f"Elements still different from aligned at α={result.alpha:g} after rounding: {percent(result.survives)}"
    )
    survival.set_xticks(range(len(labels)), labels)
    survival.set_xlabel("layer")
    change.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")  # beside the bars, never on one
    fig.tight_layout()
    save_png(fig, path)
    return bars
