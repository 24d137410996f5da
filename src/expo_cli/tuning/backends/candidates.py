"""One loaded model that becomes θ(α) for any α in place: how `expo tune` evaluates candidates.

The model is loaded once from the aligned folder. For each candidate, the streaming core walks both memory-mapped
checkpoints block by block and the engine computes each block straight into the parameter that holds it (a
`sinks.ParameterSink`), with exactly the arithmetic, rounding and per-tensor α of `expo merge`: the parameters
are bit for bit the tensors `expo merge` would write at that α (with `--dtype` the model's dtype). Host memory
stays one model plus a block of scratch, never three models.

Checkpoint names must be the model's parameter names. Architectures that transformers re-lays out when it loads
them (fused MoE experts and similar) are refused: every parameter must be written by some checkpoint tensor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...core.pairing import TensorPair
from ...core.sinks import ParameterSink, TensorSink
from ...core.sources import dtype_name, torch_dtype
from ...core.streaming import Target, explain_nonfinite, stream
from ...errors import MismatchError

if TYPE_CHECKING:
    import torch

    from ...merging.api import PreparedRun, WeightSet
    from ...options import MergeOptions


@dataclass
class CandidateModel:
    """A model whose parameters are set to θ(α) by `set_alpha`."""

    model: torch.nn.Module
    run: PreparedRun
    sink: ParameterSink
    alpha: float | None = None

    @classmethod
    def attach(cls, model: torch.nn.Module, run: PreparedRun) -> CandidateModel:
        """Map every checkpoint tensor of the run to the model tensor it is loaded into; refuse what cannot be
        written exactly (a parameter no tensor writes, a shape or dtype that differs)."""
        state = model.state_dict(keep_vars=True)
        targets: dict[str, torch.Tensor] = {}
        for t in run.main.pairing.tensors:
            held = state.get(t.name)
            if held is None:
                continue  # not part of the model (transformers ignores it when loading, too)
            held = held.data
            if tuple(held.shape) != t.shape:
                raise MismatchError(
                    f"tensor {t.name!r}: the model holds {tuple(held.shape)}, the checkpoint "
                    f"{t.shape}; expo tune needs checkpoint names and shapes as loaded"
                )
            if held.dtype != torch_dtype(t.out_dtype):
                raise MismatchError(
                    f"tensor {t.name!r}: the model holds {held.dtype}, the merge would write "
                    f"{dtype_name(t.out_dtype)}; pass --dtype to load both alike"
                )
            if not held.is_contiguous():
                raise MismatchError(f"tensor {t.name!r} is not contiguous in the loaded model")
            targets[t.name] = held
        written = {held.data_ptr() for held in targets.values()}
        for name, param in model.named_parameters():
            if param.data_ptr() not in written:
                raise MismatchError(
                    f"parameter {name!r} of the loaded model has no tensor of that name in the checkpoint "
                    "(transformers re-lays this architecture out when loading it); expo tune cannot set it, "
                    "use expo merge --alpha A,B,C and evaluate the checkpoints"
                )
        return cls(model, run, ParameterSink(targets))

    def set_alpha(self, alpha: float, opts: MergeOptions) -> float:
        """Make the model θ(α); return the seconds it took."""
        import torch  # torch loads on first use, not with the package

        started = time.perf_counter()
        weights = self.run.main
        tensors = [t for t in weights.pairing.tensors if t.name in self.sink.targets]
        device = next(iter(self.sink.targets.values())).device
        alphas = self.run.alphas(alpha, weights.pairing)
        with torch.no_grad(), weights.sft, weights.aligned:
            compute_into(weights, tensors, alphas, self.sink, device, opts.strict, opts.warning)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.alpha = alpha
        return time.perf_counter() - started


def compute_into(
    weights: WeightSet,
    tensors: Sequence[TensorPair],
    alphas: dict[str, float],
    sink: TensorSink,
    device: torch.device,
    strict: bool,
    warn: Callable[[str], None],
) -> None:
    """θ(α) of `tensors` into `sink`, computed on `device` with `expo merge`'s arithmetic (α per tensor); the
    inputs are open (a caller that computes several groups opens them once)."""
    from ...core.engine import ChunkEngine  # imports torch

    if tensors:
        stream(
            tensors,
            weights.sft,
            weights.aligned,
            [Target(alphas, sink)],
            ChunkEngine(device),
            False,
            lambda t, a: explain_nonfinite(t, weights.sft, weights.aligned, a, strict=strict, warn=warn),
        )
