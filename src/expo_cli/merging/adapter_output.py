"""`--as-adapter`: the extrapolation written as a PEFT adapter for the same SFT model, instead of a full checkpoint.

With plain LoRA, θ_expo − θ_sft = (1+α)·s·B·A: the same adapter with every lora_B (lora_embedding_B, lora_B.bias)
multiplied by (1+α), and each tensor it saved whole extrapolated in full, v' = v + α·(v − v_sft). Both are the
streaming core's ordinary arithmetic: a B factor is extrapolated against zeros, a whole tensor against the SFT
model's, each rounded once to its own dtype; lora_A is copied. The config is the aligned adapter's, with a
base_model_name_or_path that names the SFT model without a local path.

When the aligned adapter continued the SFT adapter (both relative to the base), θ_expo − base = (1+α)·s₂B₂A₂ −
α·s₁B₁A₁: one adapter of rank r₁ + r₂ per module, A = [A₂; A₁], B = [(1+α)s₂B₂, −α·s₁B₁] (the scales folded into
B, so its config says s = 1 through rank_pattern and alpha_pattern). DoRA is not linear in its update and is
refused: a merged output is exact there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.pairing import Pairing, TensorPair
from ..core.sources import TensorInfo, TensorSource, torch_dtype
from ..core.writer import mirror_shards
from ..errors import UsageError
from ..inputs.adapters import ADAPTER_CONFIG, PREFIX, Adapter, LoraSource
from .weights import WeightSet

if TYPE_CHECKING:
    import torch

ADAPTER_FILE = "adapter_model.safetensors"
ZEROS = Path("<zeros>")  # the "SFT side" of a B factor: extrapolating against zero multiplies by (1+α)
B_FACTORS = (".lora_B.weight", ".lora_embedding_B", ".lora_B.bias")


class AgainstSource:
    """The SFT side of an adapter output: zeros for B factors, the SFT model's tensors for those saved whole."""

    def __init__(self, sft: TensorSource) -> None:
        self.sft = sft
        self.path, self.config, self.tensors = sft.path, sft.config, sft.tensors

    @property
    def readable(self) -> bool:
        return self.sft.readable

    def __enter__(self) -> AgainstSource:
        self.sft.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sft.__exit__(*exc)

    def flat(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        import torch  # torch loads on first use, not with the package

        if info.file == ZEROS:
            return torch.zeros(stop - start, dtype=torch.float32)
        return self.sft.flat(info, start, stop)

    def raw(self, info: TensorInfo, start: int, stop: int) -> memoryview:
        if info.file == ZEROS:
            return memoryview(bytes(4 * (stop - start)))
        return self.sft.raw(info, start, stop)

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        if info.file != ZEROS:
            self.sft.prefetch(info, start, stop)


def adapter_weight_set(
    sft: TensorSource, aligned: TensorSource, alphas: Sequence[float], alpha_rules: bool
) -> tuple[WeightSet, dict]:
    """What `--as-adapter` writes at `alphas` (adapter_model.safetensors, planned for the streaming core) and its
    config."""
    if not isinstance(aligned, LoraSource):
        raise UsageError("--as-adapter needs --aligned to be a LoRA adapter (a full model has no adapter form)")
    if alpha_rules:
        raise UsageError("--as-adapter takes one α for the whole adapter; drop --alpha-for/--include/--exclude")
    adapter = aligned.adapter
    for source in (aligned, sft):
        while isinstance(source, LoraSource):
            if source.adapter.dora:
                raise UsageError(
                    f"{source.adapter.path.name} is a DoRA adapter: its update is not linear, so no "
                    "rescaled adapter is exact; drop --as-adapter to write the merged model"
                )
            source = source.base
    if isinstance(sft, LoraSource) and aligned.base is not sft:  # it continued the SFT adapter
        if len(alphas) != 1:
            raise UsageError("--as-adapter: two continued adapters combine for one α at a time; run one per α")
        return _combined(sft, aligned, alphas[0])
    pairs = []
    for key, info in adapter.weights.tensors.items():
        name = key[len(adapter.prefix) :]
        if name.endswith(B_FACTORS):
            against: TensorInfo | None = TensorInfo(key, "F32", info.shape, ZEROS)
        elif ".lora_" in name or _is_base_layer_of_update(name, adapter):
            against = None  # lora_A, and an embedding's saved base layer (unchanged base): copied
        else:
            against = aligned.base.tensors[name.replace(".base_layer.", ".")]
        pairs.append(TensorPair(key, info, against, info.dtype, info.numel if against is not None else 0))
    weights = WeightSet(
        AgainstSource(aligned.base),
        adapter.weights,
        Pairing(pairs, []),
        mirror_shards(pairs, [ADAPTER_FILE] * len(pairs)),
        None,
    )
    return weights, json.loads((adapter.path / ADAPTER_CONFIG).read_text(encoding="utf-8"))


def _is_base_layer_of_update(name: str, adapter: Adapter) -> bool:
    return ".base_layer." in name and name.replace(".base_layer.", ".") in adapter.low_rank


def _combined(sft: LoraSource, aligned: LoraSource, alpha: float) -> tuple[WeightSet, dict]:
    """One adapter of rank r₁ + r₂ per module for (1+α)·Δ₂ − α·Δ₁, both relative to the base (`CombinedSource`)."""
    source = CombinedSource(sft, aligned, alpha)
    pairs = [TensorPair(name, info, None, info.dtype, 0) for name, info in source.tensors.items()]
    weights = WeightSet(source, source, Pairing(pairs, []), mirror_shards(pairs, [ADAPTER_FILE] * len(pairs)), None)
    return weights, source.adapter_config()


class CombinedSource:
    """The combined adapter's tensors at one α: shapes from the headers, values computed when it is opened for
    streaming (small: factors and the modules saved whole)."""

    def __init__(self, sft: LoraSource, aligned: LoraSource, alpha: float) -> None:
        self.alpha = alpha
        self.sft_source, self.aligned_source = sft, aligned
        self.first, self.second = sft.adapter, aligned.adapter
        self.path, self.config = aligned.path, aligned.config
        self.values: dict[str, torch.Tensor] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.factors: dict[str, tuple[str, str]] = {}  # module -> its (A, B) keys
        self.whole: dict[str, str] = {}  # key -> tensor name
        modules = dict.fromkeys([*self.second.low_rank, *self.first.low_rank])
        for name in modules:
            u2, u1 = self.second.low_rank.get(name), self.first.low_rank.get(name)
            ref = u2 or u1
            assert ref is not None
            if u1 and u2 and u1.transposed != u2.transposed:
                raise UsageError(f"{name}: the two adapters store its factors differently; drop --as-adapter")
            rank = (u2.a.shape[0] if u2 else 0) + (u1.a.shape[0] if u1 else 0)
            module = name[: -len(".weight")]
            embedding = ref.a.name.endswith("lora_embedding_A")
            keys = tuple(
                f"{PREFIX}{module}.{k}"
                for k in (
                    ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A.weight", "lora_B.weight")
                )
            )
            self.factors[module] = keys  # type: ignore[assignment]
            self._add(keys[0], ref.a.dtype, (rank, ref.a.shape[1]))
            self._add(keys[1], ref.b.dtype, (ref.b.shape[0], rank))
        if self.first.bias_updates or self.second.bias_updates:  # lora_bias gives every module a lora_B.bias
            base = self.aligned_source.tensors
            for module in self.factors:
                if f"{module}.bias" not in base:
                    raise UsageError(
                        f"{module}: a LoRA bias (lora_bias) in one adapter makes PEFT give every combined module one, "
                        "and this layer has no bias to merge it into; drop --as-adapter"
                    )
                held = base[f"{module}.bias"]
                self._add(f"{PREFIX}{module}.lora_B.bias", held.dtype, held.shape)
        for name in dict.fromkeys([*self.second.whole, *self.first.whole]):
            if name in modules:
                continue  # an embedding's saved base layer: the base itself
            if name.rsplit(".", 1)[0] in self.factors:
                raise UsageError(
                    f"{name}: a trained bias of a LoRA layer in two continued adapters (bias='all') has "
                    "no combined adapter form; drop --as-adapter"
                )
            held = self.aligned_source.tensors[name]
            self.whole[f"{PREFIX}{name}"] = name
            self._add(f"{PREFIX}{name}", held.dtype, held.shape)

    def _add(self, key: str, dtype: str, shape: tuple[int, ...]) -> None:
        self.tensors[key] = TensorInfo(key, dtype, tuple(shape), self.path / "combined")

    @property
    def readable(self) -> bool:
        return True

    def __enter__(self) -> CombinedSource:
        if not self.values:
            self._compute(self.alpha)
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def flat(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        return self.values[info.name].reshape(-1)[start:stop]

    def raw(self, info: TensorInfo, start: int, stop: int) -> memoryview:
        import torch  # torch loads on first use, not with the package

        return memoryview(self.flat(info, start, stop).contiguous().view(torch.uint8).numpy())

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        pass

    def _compute(self, alpha: float) -> None:
        """Compute every tensor for this α in float32 (float64 for whole tensors), rounded once to its dtype."""
        import torch  # torch loads on first use, not with the package

        first, second = self.first.weights, self.second.weights

        def factor(info: TensorInfo, weights: Any) -> torch.Tensor:
            return weights.flat(info, 0, info.numel).to(torch.float32).view(info.shape)

        def store(key: str, value: torch.Tensor) -> None:
            self.values[key] = value.to(torch_dtype(self.tensors[key].dtype)).contiguous()

        with first, second:
            for module, (a_key, b_key) in self.factors.items():
                u2, u1 = self.second.low_rank.get(f"{module}.weight"), self.first.low_rank.get(f"{module}.weight")
                parts = [
                    (factor(u.a, w), weight * u.scale * factor(u.b, w))
                    for u, w, weight in ((u2, second, 1 + alpha), (u1, first, -alpha))
                    if u
                ]
                store(a_key, torch.cat([a for a, _ in parts], 0))
                store(b_key, torch.cat([b for _, b in parts], 1))
            for key, info in self.tensors.items():
                if key.endswith(".lora_B.bias"):
                    name = key[len(PREFIX) : -len(".lora_B.bias")] + ".bias"
                    value = torch.zeros(info.shape, dtype=torch.float32)
                    for adapter, weights, weight in ((self.second, second, 1 + alpha), (self.first, first, -alpha)):
                        if name in adapter.bias_updates:
                            bias, scale = adapter.bias_updates[name]
                            value += weight * scale * factor(bias, weights)
                    store(key, value)
        with self.sft_source, self.aligned_source:
            for key, name in self.whole.items():  # (1+α)·θ_aligned − α·θ_sft: a module saved whole
                held = self.aligned_source.tensors[name]
                aligned = self.aligned_source.flat(held, 0, held.numel).to(torch.float64)
                sft = self.sft_source.flat(held, 0, held.numel).to(torch.float64)
                store(key, (aligned + alpha * (aligned - sft)).view(held.shape))

    def adapter_config(self) -> dict[str, Any]:
        """The aligned adapter's config naming exactly the modules the file holds (PEFT creates those and no
        other), with the combined ranks and s = 1 everywhere (scales are folded into B)."""
        config = json.loads((self.second.path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        rank = max(self.ranks.values(), default=config["r"])
        saved = [*(config.get("modules_to_save") or []), *(self.first.config.get("modules_to_save") or [])]
        patterns = {_pattern_key(m): r for m, r in sorted(self.ranks.items(), key=lambda mr: -len(mr[0]))}
        config.update(
            {
                "r": rank,
                "lora_alpha": rank,
                "use_rslora": False,
                "rank_pattern": patterns,
                "alpha_pattern": dict(patterns),
                "target_modules": sorted(self.ranks),
                "modules_to_save": list(dict.fromkeys(saved)) or None,
                "lora_bias": any(key.endswith(".lora_B.bias") for key in self.tensors),
                # settings that would make PEFT create fewer modules than the file holds, or rewrite the base
                "layers_to_transform": None,
                "layers_pattern": None,
                "exclude_modules": None,
                "init_lora_weights": True,
            }
        )
        return config

    @property
    def ranks(self) -> dict[str, int]:
        return {module: self.tensors[a].shape[0] for module, (a, _) in self.factors.items()}


def _pattern_key(module: str) -> str:
    """A rank/alpha pattern key for exactly this module under every PEFT version's rule (`lora_patterns`): its name
    without the first component, escaped, so that a dot precedes it (0.14 and earlier need one). Keys are written
    longest first, so a module whose name ends like another's meets its own key first."""
    return re.escape(module.split(".", 1)[1] if "." in module else module)


def publishable_base(config: dict[str, Any], sft_name: str) -> dict[str, Any]:
    """The config with a base_model_name_or_path that may be published: a local path (where the adapter was
    trained) becomes the SFT model's Hub id or folder name."""
    declared = config.get("base_model_name_or_path")
    if isinstance(declared, str) and (
        declared.startswith(("/", "~", ".")) or Path(declared).exists() or re.match(r"^[A-Za-z]:[\\/]", declared)
    ):
        config = {**config, "base_model_name_or_path": sft_name.partition("@")[0]}
    return config
