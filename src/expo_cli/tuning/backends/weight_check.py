"""Proof, after each in-place update, that a vLLM worker holds θ(α): every region its loaders fill compared with
the values expo computed for it.

The regions are those `slicing.learn` recorded (a parameter, an offset, a shape and strides, and the view of the
checkpoint tensor that fills it). While the update runs, `expect` fingerprints each region's values as expo
computed them; a layer is compared when vLLM has loaded it and before it processes it (processing may repack a
weight, as vLLM's CPU linear layers do), or after the reload for layers with nothing to process. The fingerprint
(`digest`) is exact: sums of the elements' bit patterns and of their squares, so a region that kept the previous
α's values, received another slice or another tensor, fails it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .slicing import Layout, Scatter, replay

if TYPE_CHECKING:
    import torch


def digest(view: torch.Tensor, slab: int = 2**22) -> tuple[int, int]:
    """An exact, order-free fingerprint of a tensor's bits: the sums of its elements' bit patterns and of their
    squares (64-bit wrap-around), a slab of the first dimension (about `slab` elements) at a time."""
    import torch  # torch loads on first use, not with the package

    signed = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[view.element_size()]
    bits = (view if view.dim() else view.reshape(1)).view(signed)
    total = squares = 0
    if not bits.numel():
        return 0, 0
    step = max(1, slab // max(1, bits[0].numel()))
    for start in range(0, bits.shape[0], step):
        wide = bits[start : start + step].to(torch.int64)
        total += int(wide.sum())
        squares += int(wide.mul_(wide).sum())
    mask = 2**64 - 1
    return total & mask, squares & mask


def region(parameter: torch.Tensor, scatter: Scatter) -> torch.Tensor:
    """The part of a parameter a scatter fills."""
    import torch  # torch loads on first use, not with the package

    return torch.as_strided(parameter, scatter.shape, scatter.stride, parameter.storage_offset() + scatter.offset)


class WeightCheck:
    """One update's comparison of the engine's regions with expo's values."""

    def __init__(self, layout: Layout, module_names: dict[int, str]) -> None:
        self.layers = layout.by_layer()
        self.layout = layout
        self.module_names = module_names
        self.expected: dict[int, tuple[int, int]] = {}
        self.compared: set[int] = set()  # layers compared
        self.mismatched: list[str] = []
        self.regions = 0

    def expect(self, name: str, tensor: torch.Tensor) -> None:
        """Fingerprint the regions `tensor` (θ(α) of checkpoint tensor `name`, as handed to vLLM) fills."""
        for scatter in self.layout.scatters.get(name, ()):
            self.expected[id(scatter)] = digest(replay(tensor, scatter.chain))

    def compare(self, layer: Any) -> None:
        """Compare every region of `layer` whose values expo fingerprinted in this update."""
        self.compared.add(id(layer))
        for scatter in self.layers.get(id(layer), ()):
            wanted = self.expected.get(id(scatter))
            if wanted is None:
                continue
            self.regions += 1
            if digest(region(getattr(layer, scatter.parameter), scatter)) != wanted:
                self.mismatched.append(f"{self.module_names.get(id(layer), '?')}.{scatter.parameter}")

    @contextmanager
    def before_processing(self, model: Any) -> Iterator[None]:
        """Compare each layer as vLLM processes it after loading (its weights still as loaded)."""
        wrapped: list[Any] = []
        for layer in model.modules():
            method = getattr(layer, "quant_method", None)
            process = getattr(method, "process_weights_after_loading", None)
            if id(layer) not in self.layers or process is None or "process_weights_after_loading" in vars(method):
                continue

            def checked(module: Any, process: Any = process) -> Any:
                if id(module) in self.layers:
                    self.compare(module)
                return process(module)

            method.process_weights_after_loading = checked
            wrapped.append(method)
        try:
            yield
        finally:
            for method in wrapped:
                del method.process_weights_after_loading  # the class's own again

    def after_reload(self) -> None:
        """Compare the layers nothing processed: their parameters are as loaded."""
        for scatters in self.layers.values():
            layer = scatters[0].layer
            if id(layer) not in self.compared:
                self.compare(layer)
