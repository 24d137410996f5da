"""What each vLLM worker keeps of every checkpoint tensor, learned once, so that it computes only that.

Under tensor parallelism a worker's weight loaders keep a slice of most tensors (rows of a column-parallel
matrix, columns of a row-parallel one, rows of a vocabulary-parallel embedding). `learn` runs the model's own
`load_weights` once on zero-storage tensors (vLLM's `FakeRDTTensor`, the recorder of its sharded weight
transfer): every loader runs as in a real load, and each `copy_` into a parameter records the chain of views
(narrow, view, transpose, ...) it took from the checkpoint tensor and the region of the parameter it fills,
moving no data. From the chains, `box` works out the block of the checkpoint tensor a worker reads; `expo`
then computes θ(α) on that block only, and checks after each update that every recorded region of every
parameter holds exactly the values it computed (`weight_check`).

A tensor whose loader does anything else (arithmetic, a copy, a dtype change), or that no loader copied from,
is computed whole: the slice is an optimisation, never a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ...core.extrapolate import Extrapolators
    from ...core.pairing import TensorPair
    from ...merging.api import WeightSet

Box = tuple[tuple[int, int], ...]  # per dimension, [start, stop)
Chain = tuple[tuple[str, tuple[Any, ...], tuple[tuple[str, Any], ...]], ...]  # (op, args, kwargs) views


@dataclass(frozen=True)
class Scatter:
    """One copy a loader makes: the checkpoint tensor's view `chain` into a region of parameter `parameter`."""

    chain: Chain
    layer: Any  # the module holding the parameter
    parameter: str  # its name in that module
    offset: int  # elements from the parameter's own storage offset
    shape: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass
class Layout:
    """What one worker's loaders do with each checkpoint tensor: the copies they make, and the block they read
    (None: the whole tensor)."""

    scatters: dict[str, list[Scatter]] = field(default_factory=dict)
    boxes: dict[str, Box | None] = field(default_factory=dict)
    unlearned: dict[str, str] = field(default_factory=dict)  # tensor name -> why it is computed whole

    def sliced(self, t: TensorPair) -> Box | None:
        """The block of `t` this worker computes, or None to compute it whole (a block that is the whole
        tensor, a tensor copied or partly copied, one whose loaders were not learned)."""
        found = self.boxes.get(t.name)
        whole = tuple((0, n) for n in t.shape)
        if found is None or found == whole or t.sft is None or t.shared != t.numel or not t.aligned.is_float:
            return None
        return found

    def by_layer(self) -> dict[int, list[Scatter]]:
        layers: dict[int, list[Scatter]] = {}
        for scatters in self.scatters.values():
            for s in scatters:
                layers.setdefault(id(s.layer), []).append(s)
        return layers


def replay(tensor: Any, chain: Chain) -> Any:
    """The view a recorded chain takes of `tensor` (multi-output ops are followed by their index)."""
    value = tensor
    for op, args, kwargs in chain:
        value = getattr(value, op)(*args, **dict(kwargs))
    return value


def box(shape: tuple[int, ...], dtype: torch.dtype, chain: Chain) -> Box | None:
    """The block of a tensor of `shape` that the view `chain` covers exactly, or None when it is not a block
    (a copy, a dtype change, a stepped slice, dimensions merged across a partial one)."""
    import torch  # torch loads on first use, not with the package

    base = torch.empty(shape, dtype=dtype, device="meta")
    view = replay(base, chain)
    if not isinstance(view, torch.Tensor) or view.dtype != dtype or (view is not base and view._base is not base):
        return None
    if view.numel() == 0:  # this worker keeps none of it (a vocabulary shard past the real rows)
        return tuple((0, 0) for _ in shape)
    strides = base.stride()
    start, rest = [], view.storage_offset()  # the innermost dimension longer than 1 has stride 1: rest ends 0
    for size, stride in zip(shape, strides, strict=True):
        index, rest = divmod(rest, stride) if size > 1 else (0, rest)
        start.append(index)
    lengths = [1] * len(shape)
    taken: set[int] = set()
    for size, stride in zip(view.shape, view.stride(), strict=True):
        if size == 1:
            continue
        dim = next((d for d in range(len(shape)) if shape[d] > 1 and strides[d] == stride), None)
        while size > 1:  # a dimension of the view may span several of the tensor's (whole rows, flattened)
            if dim is None or dim < 0 or dim in taken:
                return None
            taken.add(dim)
            if shape[dim] == 1:
                dim -= 1
                continue
            if start[dim] + size <= shape[dim]:
                lengths[dim], size = size, 1
            elif start[dim] == 0 and size % shape[dim] == 0:
                lengths[dim], size = shape[dim], size // shape[dim]
                dim -= 1
            else:
                return None
    return tuple((s, s + n) for s, n in zip(start, lengths, strict=True))


def bounding(boxes: list[Box | None]) -> Box | None:
    """The smallest block holding every box (None if any is not a block; empty boxes hold nothing)."""
    if not boxes or any(b is None for b in boxes):
        return None
    held = [b for b in boxes if b is not None and all(stop > start for start, stop in b)]
    boxes = held or boxes[:1]
    return tuple((min(d[0] for d in dims), max(d[1] for d in dims)) for dims in zip(*boxes, strict=True))  # type: ignore[arg-type]


def learn(model: Any, tensors: list[TensorPair]) -> Layout:
    """Run the model's loaders, as vLLM's in-place reload does, on zero-storage stand-ins of `tensors` (one at a
    time), recording each copy; then put the model back as it was. Nothing is read, computed or moved.

    This follows vLLM's own sharded transfer (`ShardedRDTWeightTransferEngine._bake`): the parameters go back
    to their checkpoint-format placeholders, and each loader runs unwrapped, marked with the module and
    parameter it fills."""
    import torch  # torch loads on first use, not with the package
    from vllm.distributed.weight_transfer.sharded_rdt_fake import BakeSink, FakeRDTTensor
    from vllm.model_executor.model_loader.reload import layerwise
    from vllm.model_executor.model_loader.reload.utils import get_layer_tensors
    from vllm.model_executor.model_loader.weight_utils import default_weight_loader

    from ...core.sources import torch_dtype

    layout = Layout()
    recorder = BakeSink()
    device = next(model.parameters()).device
    marked: list[tuple[Any, bool]] = []  # (tensor, whether it had no loader before)

    def marking(layer: Any, name: str, inner: Any) -> Any:
        def loader(*args: Any, **kwargs: Any) -> Any:
            recorder.current = (layer, name)
            try:
                return inner(*args, **kwargs)
            finally:
                recorder.current = None

        loader.expo_inner = inner  # type: ignore[attr-defined]
        return loader

    with torch.device(device):
        layerwise.initialize_layerwise_reload(model)
        try:
            for layer in model.modules():
                for name, tensor in get_layer_tensors(layer).items():
                    own = getattr(tensor, "weight_loader", None)
                    inner = default_weight_loader if own is None else layerwise._get_original_loader(tensor)
                    tensor.weight_loader = marking(layer, name, inner)
                    marked.append((tensor, own is None))
            for t in tensors:
                recorder.copies_by_layer.clear()
                stand_in = FakeRDTTensor(t.name, torch.Size(t.shape), torch_dtype(t.out_dtype), device, sink=recorder)
                try:
                    model.load_weights([(t.name, stand_in)])
                except Exception as err:  # a loader that needs the data: computed whole
                    layout.unlearned[t.name] = f"{type(err).__name__}: {err}".splitlines()[0]
                    continue
                copies = [(layer, c) for layer, made in recorder.copies_by_layer.items() for c in made]
                if not copies or any(c is None for _, c in copies):
                    layout.unlearned[t.name] = "no loader copied from it" if not copies else "a copy not attributed"
                    continue
                layout.scatters[t.name] = [
                    Scatter(
                        c.src[1],
                        layer,
                        c.param_name,
                        c.offset - getattr(layer, c.param_name).storage_offset(),
                        c.shape,
                        c.stride,
                    )
                    for layer, c in copies
                ]
                dtype = torch_dtype(t.out_dtype)
                layout.boxes[t.name] = bounding([box(t.shape, dtype, s.chain) for s in layout.scatters[t.name]])
        finally:
            for tensor, added in marked:
                if added:
                    del tensor.weight_loader
                else:
                    tensor.weight_loader = tensor.weight_loader.expo_inner
            for layer in model.modules():
                info = layerwise.LAYERWISE_INFO.get(layer)
                if info is not None and info.can_load():
                    if info.kernel_tensors is not None:
                        layerwise._place_kernel_tensors(layer, info)
                    info.reset()
            if hasattr(model, "_original_do_torchao_reload"):
                model._do_torchao_reload = model._original_do_torchao_reload
    return layout


def compute_block(
    weights: WeightSet,
    t: TensorPair,
    block: Box,
    alpha: float,
    target: torch.Tensor,
    device: torch.device,
    extrapolators: Extrapolators,
    chunk: int | None = None,
) -> list[torch.Tensor]:
    """θ(α) of the elements of `t` in `block` into the same elements of `target` (the rest is left as it is),
    with `expo merge`'s arithmetic, a slab of rows at a time; return finiteness probes. Only the block's elements
    of both inputs are touched (a memory-mapped file reads only their pages). A slab holds about `chunk`
    elements (`CHUNK_ELEMENTS`), so memory stays bounded on a GPU."""
    from ...constants import CHUNK_ELEMENTS
    from ...core.extrapolate import finite_probe

    assert t.sft is not None
    (first, last), inner = block[0], tuple(slice(*d) for d in block[1:])
    row_numel = t.aligned.row_numel
    step = max(1, (chunk or CHUNK_ELEMENTS) // max(1, math.prod(stop - start for start, stop in block[1:])))
    probes = []
    for row in range(first, last, step):
        end = min(row + step, last)

        def part(source: Any, info: Any, row: int = row, end: int = end) -> torch.Tensor:
            rows = source.flat(info, row * row_numel, end * row_numel).view((end - row, *t.shape[1:]))
            return rows[(slice(None), *inner)]

        out = target[row:end][(slice(None), *inner)]
        if alpha == 0 and t.out_dtype == t.aligned.dtype:  # bit for bit the aligned block, as a merge copies it
            out.copy_(part(weights.aligned, t.aligned))
        elif alpha == -1 and t.out_dtype == t.sft.dtype:
            out.copy_(part(weights.sft, t.sft))
        else:
            sft = part(weights.sft, t.sft).to(device)  # on a GPU a copy of the block's elements, else a view
            aligned = part(weights.aligned, t.aligned).to(device)
            result = extrapolators[alpha](sft, aligned, out)
            probes.append(finite_probe(result))
    return probes
