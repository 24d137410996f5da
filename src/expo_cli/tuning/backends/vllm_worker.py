"""The engine side of `expo tune --backend vllm`: a vLLM worker extension that makes the served model θ(α) in place.

vLLM mixes `WeightUpdater` into every worker of the engine (`LLM(worker_extension_cls=...)`), so the same code
serves the in-process engine, the multiprocess one and tensor parallelism. Each worker computes θ(α) itself, with
`expo merge`'s arithmetic, from the memory-mapped checkpoints on its own device, and hands the tensors, under
their checkpoint names, to vLLM's in-place reload, which shards, fuses and repacks them exactly as when it loads
a checkpoint. Under tensor parallelism a worker computes each tensor only on the block its loaders keep
(`slicing`, learned on the first update); the rest of what it hands over is never read. The tensors are computed
a group of at most `GROUP_BYTES` at a time, so a worker's extra memory does not grow with the model, and every
update is checked (`weight_check`). Only small things cross the process boundary: the pickled inputs once
(`expo_attach`), then a dict of α per tensor per candidate, and back the warnings, an error and the update's
costs.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ...core.pairing import TensorPair
from ...core.sources import itemsize
from ...core.streaming import explain_nonfinite
from ...errors import ExpoError
from .candidates import compute_into
from .slicing import Layout, compute_block, learn
from .weight_check import WeightCheck

if TYPE_CHECKING:
    from ...core.extrapolate import Extrapolators

GROUP_BYTES = 512 * 2**20  # θ(α) computed ahead of the reload, at most (a larger single tensor goes alone)


class WeightUpdater:
    """Worker methods called through `LLM.collective_rpc` (vLLM's worker is `self`)."""

    def expo_attach(self, inputs: bytes, sliced: bool = True) -> int:
        """Keep the inputs (a pickled `WeightSet` made by this same expo in the calling process); return how many
        tensors each update writes. `sliced=False` computes every tensor whole (for measuring the difference)."""
        self.expo_weights = pickle.loads(inputs)  # noqa: S301  (expo's own objects, from expo's own process)
        self.expo_sliced = sliced
        self.expo_layout: Layout | None = None
        return len(self.expo_weights.pairing.tensors)

    def expo_set_alpha(
        self, alphas: dict[str, float], strict: bool
    ) -> tuple[list[str], tuple[str, str] | None, dict[str, Any]]:
        """Reload every weight as θ(α) (`alphas`: α per tensor name); return the warnings it gave, the error that
        makes this update unusable, as (kind, message), for the calling process to raise as its own, and what
        the update cost this worker (`UpdateStats`).

        The reload always runs to its end, so vLLM's layer-wise state stays whole even when a tensor overflows
        (the calling process then refuses to generate until an update succeeds). Afterwards every parameter must
        have received a value (vLLM would keep the previous α's, with a warning only), every region a loader
        fills must hold exactly what expo computed for it (`weight_check`), and a module that shares a reloaded
        parameter without receiving it itself (a tied LM head) is processed again: vLLM's CPU build multiplies
        through a copy packed when the module was processed.
        """
        started = time.perf_counter()
        warnings: list[str] = []
        failures: list[tuple[str, str]] = []
        model = self.model_runner.get_model()
        if self.expo_layout is None:  # learned on the first update: it rewrites every weight anyway
            self.expo_layout = self._expo_learn(model)
        layout = self.expo_layout
        check = WeightCheck(layout, {id(m): name for name, m in model.named_modules()})
        why = "" if layout.scatters else next(iter(layout.unlearned.values()), "")
        stats = UpdateStats(rank=self.rank, learned=len(layout.scatters), not_learned=why)
        loaded: set[str] = set()
        load = model.load_weights

        def recording(weights: Any) -> Any:
            names = load(weights)
            loaded.update(names or ())
            return names

        model.load_weights = recording  # what reload_weights calls; vLLM does not return what it loaded
        try:
            with check.before_processing(model):
                self.reload_weights(
                    weights_iterator=self._expo_tensors(alphas, strict, warnings, failures, check, stats),
                    is_checkpoint_format=True,
                )
        finally:
            del model.load_weights  # the class's own again
        error = failures[0] if failures else self._expo_verify(model, loaded, check)
        stats.regions_checked = check.regions
        stats.seconds = time.perf_counter() - started
        return warnings, error, asdict(stats)

    def _expo_verify(self, model: Any, loaded: set[str], check: WeightCheck) -> tuple[str, str] | None:
        """After a reload that ran through: every parameter received a value, every learned region holds expo's
        values, and the modules sharing a reloaded parameter are processed again. The error, as (kind, message)."""
        missing = sorted({name for name, _ in model.named_parameters()} - loaded)
        if missing:
            return (
                "MismatchError",
                f"vLLM received no value for {len(missing)} parameter(s) of the engine, e.g. {missing[0]!r}: they "
                "would keep the previous α's; use --backend transformers for this model",
            )
        check.after_reload()
        if check.mismatched:
            return (
                "ExpoError",
                f"after the update, {len(check.mismatched)} weight(s) of the engine do not hold the values expo "
                f"computed, e.g. {check.mismatched[0]!r}: vLLM loaded this model differently from what expo "
                "learned; use --backend transformers for this model",
            )
        for module in _sharing_without_loading(model, loaded):
            module.quant_method.process_weights_after_loading(module)
        return None

    def _expo_learn(self, model: Any) -> Layout:
        """Which block of each tensor this worker keeps and where its loaders put it (`slicing.learn`); nothing
        (whole tensors, checked for completeness only) when this vLLM cannot tell."""
        tensors = self.expo_weights.pairing.tensors
        try:
            return learn(model, tensors)
        except Exception as err:  # a vLLM without the recorder, or one it does not fit: whole tensors, unchecked
            return Layout(unlearned={t.name: f"{type(err).__name__}: {err}".splitlines()[0] for t in tensors})

    def _expo_tensors(
        self,
        alphas: dict[str, float],
        strict: bool,
        warnings: list[str],
        failures: list[tuple[str, str]],
        check: WeightCheck,
        stats: UpdateStats,
    ) -> Iterator[tuple[str, Any]]:
        """θ(α), a group of tensors at a time, each computed on the block this worker keeps (whole where that is
        not known); the checkpoint files are opened once per update. A group that fails (an overflow) is still
        handed over, so that the reload finishes, and its error kept in `failures`."""
        import torch  # torch loads on first use, not with the package

        from ...core.extrapolate import Extrapolators  # imports torch
        from ...core.sources import torch_dtype

        weights = self.expo_weights
        device = torch.device(self.device)
        extrapolators = Extrapolators()
        with torch.no_grad(), weights.sft, weights.aligned:
            for group in _groups(weights.pairing.tensors):
                targets = {t.name: torch.empty(t.shape, dtype=torch_dtype(t.out_dtype), device=device) for t in group}
                try:
                    started = time.perf_counter()
                    self._expo_group(group, targets, alphas, strict, warnings.append, extrapolators, stats)
                    computed = time.perf_counter()
                    for name, tensor in targets.items():
                        check.expect(name, tensor)
                    stats.compute_seconds += computed - started
                    stats.check_seconds += time.perf_counter() - computed
                except Exception as err:  # any failure: the reload must still end whole, the caller raises this
                    kind = type(err).__name__ if isinstance(err, ExpoError) else "ExpoError"
                    failures.append((kind, str(err) if isinstance(err, ExpoError) else f"{kind}: {err}"))
                yield from targets.items()
                del targets

    def _expo_group(
        self,
        group: list[TensorPair],
        targets: dict[str, Any],
        alphas: dict[str, float],
        strict: bool,
        warn: Callable[[str], None],
        extrapolators: Extrapolators,
        stats: UpdateStats,
    ) -> None:
        """θ(α) of one group into `targets`: tensors with a learned block on that block only, the others whole
        with `expo merge`'s streaming walk."""
        import torch  # torch loads on first use, not with the package

        from ...core.sinks import ParameterSink

        weights, layout = self.expo_weights, self.expo_layout
        assert layout is not None
        device = torch.device(self.device)
        blocks = {t.name: layout.sliced(t) if self.expo_sliced else None for t in group}
        whole = [t for t in group if blocks[t.name] is None]
        compute_into(weights, whole, alphas, ParameterSink(targets), device, strict, warn)
        for t in group:
            block = blocks[t.name]
            if block is None:
                stats.bytes_read += t.aligned.nbytes + (t.sft.nbytes if t.sft is not None else 0)
                continue
            assert t.sft is not None
            alpha = alphas[t.name]
            probes = compute_block(weights, t, block, alpha, targets[t.name], device, extrapolators)
            if probes and not bool(torch.isfinite(torch.cat(probes)).all()):
                explain_nonfinite(t, weights.sft, weights.aligned, alpha, strict=strict, warn=warn)
            kept = math.prod(stop - start for start, stop in block)
            stats.bytes_read += kept * (itemsize(t.aligned.dtype) + itemsize(t.sft.dtype))
            stats.sliced += 1


@dataclass
class UpdateStats:
    """What one update cost one worker: seconds, bytes of the checkpoints its arithmetic read (the elements of
    the blocks it computed, both inputs), tensors computed on a block only, and how many of its loaders' regions
    were compared with expo's values."""

    rank: int
    learned: int  # tensors whose loaders' copies were learned
    not_learned: str  # why none was, if none was
    seconds: float = 0.0  # the whole update: θ(α), vLLM's loading and processing, the checks
    compute_seconds: float = 0.0  # θ(α) alone
    check_seconds: float = 0.0  # fingerprinting what expo computed (the engine's side is within `seconds`)
    bytes_read: int = 0
    sliced: int = 0
    regions_checked: int = 0


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
