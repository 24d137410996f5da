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
        that stopped it, as (kind, message), for the calling process to raise as its own."""
        warnings: list[str] = []
        try:
            self.reload_weights(
                weights_iterator=self._expo_tensors(alphas, strict, warnings), is_checkpoint_format=True
            )
        except ExpoError as err:  # an overflow at this α: the engine's weights are then a mix, set again before use
            return warnings, (type(err).__name__, str(err))
        return warnings, None

    def _expo_tensors(self, alphas: dict[str, float], strict: bool, warnings: list[str]) -> Iterator[tuple[str, Any]]:
        import torch  # torch loads on first use, not with the package

        from ...core.sinks import ParameterSink
        from ...core.sources import torch_dtype

        weights = self.expo_weights
        device = torch.device(self.device)
        for group in _groups(weights.pairing.tensors):
            targets = {t.name: torch.empty(t.shape, dtype=torch_dtype(t.out_dtype), device=device) for t in group}
            compute_into(weights, group, alphas, ParameterSink(targets), device, strict, warnings.append)
            yield from targets.items()
            del targets


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
