"""The engine side of `expo tune --backend vllm`: a vLLM worker extension that makes the served model θ(α) in place.

vLLM mixes `WeightUpdater` into every worker of the engine (`LLM(worker_extension_cls=...)`), so the same code
serves the in-process engine, the multiprocess one and tensor parallelism on several GPUs. Each worker computes
θ(α) itself, with `expo merge`'s streaming arithmetic (`candidates.compute_into`: the blocks a merge writes, α per
tensor) from the memory-mapped checkpoints on its own device, and hands the whole tensors, under their checkpoint
names, to vLLM's in-place reload, which shards, fuses and repacks them exactly as when it loads a checkpoint. The
tensors are computed a group of at most `GROUP_BYTES` at a time, so a worker's extra memory does not grow with the
model. Only small things cross the process boundary: the pickled inputs once (`expo_attach`), then a dict of α per
tensor per candidate.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

from ...errors import ExpoError
from .candidates import compute_into

GROUP_BYTES = 512 * 2**20  # θ(α) computed ahead of the reload, at most (a larger single tensor goes alone)


class WeightUpdater:
    """Worker methods called through `LLM.collective_rpc` (vLLM's worker is `self`)."""

    def expo_attach(self, inputs: bytes) -> int:
        """Keep the inputs (a pickled `WeightSet` made by this same expo in the calling process); return how many
        tensors each update writes."""
        self.expo_weights = pickle.loads(inputs)  # noqa: S301  (expo's own objects, from expo's own process)
        return len(self.expo_weights.pairing.tensors)

    def expo_set_alpha(self, alphas: dict[str, float], strict: bool) -> tuple[list[str], tuple[str, str] | None]:
        """Reload every weight as θ(α) (`alphas`: α per tensor name); return the warnings it gave and the error
        that makes this update unusable, as (kind, message), for the calling process to raise as its own.

        The reload always runs to its end, so vLLM's layer-wise state stays whole even when a tensor overflows
        (the calling process then refuses to generate until an update succeeds). Afterwards every parameter must
        have received a value (vLLM would keep the previous α's, with a warning only), and a module that shares a
        reloaded parameter without receiving it itself (a tied LM head) is processed again: vLLM's CPU build
        multiplies through a copy packed when the module was processed.
        """
        warnings: list[str] = []
        failures: list[tuple[str, str]] = []
        model = self.model_runner.get_model()
        loaded: set[str] = set()
        load = model.load_weights

        def recording(weights: Any) -> Any:
            names = load(weights)
            loaded.update(names or ())
            return names

        model.load_weights = recording  # what reload_weights calls; vLLM does not return what it loaded
        try:
            self.reload_weights(
                weights_iterator=self._expo_tensors(alphas, strict, warnings, failures), is_checkpoint_format=True
            )
        finally:
            del model.load_weights  # the class's own again
        if failures:
            return warnings, failures[0]
        missing = sorted({name for name, _ in model.named_parameters()} - loaded)
        if missing:
            return warnings, (
                "MismatchError",
                f"vLLM received no value for {len(missing)} parameter(s) of the engine, e.g. {missing[0]!r}: they "
                "would keep the previous α's; use --backend transformers for this model",
            )
        for module in _sharing_without_loading(model, loaded):
            module.quant_method.process_weights_after_loading(module)
        return warnings, None

    def _expo_tensors(
        self, alphas: dict[str, float], strict: bool, warnings: list[str], failures: list[tuple[str, str]]
    ) -> Iterator[tuple[str, Any]]:
        """θ(α), a group of tensors at a time; a group that fails (an overflow) is still handed over, so that the
        reload finishes, and its error kept in `failures`."""
        import torch  # torch loads on first use, not with the package

        from ...core.sinks import ParameterSink
        from ...core.sources import torch_dtype

        weights = self.expo_weights
        device = torch.device(self.device)
        for group in _groups(weights.pairing.tensors):
            targets = {t.name: torch.empty(t.shape, dtype=torch_dtype(t.out_dtype), device=device) for t in group}
            try:
                compute_into(weights, group, alphas, ParameterSink(targets), device, strict, warnings.append)
            except Exception as err:  # any failure: the reload must still end whole, the caller raises this
                kind = type(err).__name__ if isinstance(err, ExpoError) else "ExpoError"
                failures.append((kind, str(err) if isinstance(err, ExpoError) else f"{kind}: {err}"))
            yield from targets.items()
            del targets


def _sharing_without_loading(model: Any, loaded: set[str]) -> list[Any]:
    """Modules holding a parameter that another module received in this reload, which they did not: a tied LM
    head beside its embedding. Only those with a processing step to run again."""
    owners: dict[int, list[tuple[str, Any]]] = {}
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            owners.setdefault(id(parameter), []).append((f"{module_name}.{name}" if module_name else name, module))
    again = []
    for holders in owners.values():
        if len(holders) > 1 and any(name in loaded for name, _ in holders):
            again += [module for name, module in holders if name not in loaded and _processed(module)]
    return again


def _processed(module: Any) -> bool:
    return hasattr(getattr(module, "quant_method", None), "process_weights_after_loading")


def _groups(tensors: list[Any]) -> Iterator[list[Any]]:
    """Consecutive tensors in groups of at most GROUP_BYTES (a larger tensor makes a group alone)."""
    group: list[Any] = []
    size = 0
    for t in tensors:
        if group and size + t.nbytes > GROUP_BYTES:
            yield group
            group, size = [], 0
        group.append(t)
        size += t.nbytes
    if group:
        yield group
