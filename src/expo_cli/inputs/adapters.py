"""PEFT LoRA adapters as inputs: a low-rank `TensorSource` that serves θ_base + s·B·A block by block.

An aligned model published as a LoRA adapter is θ_aligned = θ_sft + s·B·A per targeted module (s = lora_alpha/r,
or lora_alpha/√r with rslora; `rank_pattern`/`alpha_pattern` per module), plus tensors saved whole
(`modules_to_save`, trained biases). `LoraSource` presents exactly those tensors, under the base model's names,
shapes and dtypes, computing each row block of a targeted weight in float32 from the base block and the factors
(a row block of B·A needs only rows of B, or columns of A for GPT-2's transposed Conv1D and for embeddings), so a
merge from an adapter is an ordinary streamed merge with bounded memory. DoRA is exact too, merged: its
magnitude rescales each output row by the norm of that row of W + s·B·A, which a row block holds whole.

The adapter file is read like any checkpoint (hostile-input checks included); its config is validated before
anything is read, and everything PEFT would do differently when loading it (`lora_features.FEATURES`: initialisations
that rewrite the base, aLoRA, routed or quantized variants, trainable tokens, other PEFT types) is refused by name
with one line. `rank_pattern`/`alpha_pattern` are read as the PEFT version that saved the adapter read them
(`lora_patterns`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..constants import ADAPTER_CONFIG
from ..core.sources import TensorInfo, TensorSource, compute_dtype, rounded_bytes
from ..errors import InputError, MismatchError
from .architecture import architecture
from .checkpoint import WEIGHT_LAYOUTS, Checkpoint, read_weights
from .lora_features import check_config
from .lora_patterns import module_rank_and_alpha

if TYPE_CHECKING:
    import torch

ADAPTER_WEIGHTS = (("adapter_model.safetensors", "safetensors"), ("adapter_model.bin", "bin"))
PREFIX = "base_model.model."


def is_adapter(folder: Path) -> bool:
    """A folder holding an adapter and no full model (a full model with stale adapter files is a full model)."""
    return (folder / ADAPTER_CONFIG).is_file() and not any((folder / name).is_file() for name, _, _ in WEIGHT_LAYOUTS)


@dataclass(frozen=True)
class LowRank:
    """The update s·B·A of one base tensor (transposed: GPT-2 Conv1D and embeddings store W as (in, out))."""

    a: TensorInfo
    b: TensorInfo
    scale: float
    transposed: bool
    magnitude: TensorInfo | None = None  # DoRA


@dataclass
class Adapter:
    """A validated LoRA adapter: its config, its weights file, and what it does to each base tensor."""

    path: Path
    config: dict[str, Any]
    weights: Checkpoint
    low_rank: dict[str, LowRank] = field(default_factory=dict)  # base tensor name -> update
    bias_updates: dict[str, tuple[TensorInfo, float]] = field(default_factory=dict)  # base bias -> (lora_B.bias, s)
    whole: dict[str, TensorInfo] = field(default_factory=dict)  # base tensor name -> tensor saved whole
    prefix: str = PREFIX  # what the file's keys carry before the base model's names

    @property
    def base_model(self) -> str | None:
        value = self.config.get("base_model_name_or_path")
        return value if isinstance(value, str) and value else None

    @property
    def dora(self) -> bool:
        return bool(self.config.get("use_dora"))

    @property
    def changed(self) -> set[str]:
        return {*self.low_rank, *self.bias_updates, *self.whole}


def read_adapter(path: Path, role: str) -> Adapter:
    """Read and validate an adapter folder's config and weight header (no tensor data)."""
    config = _read_config(path, role)
    for name, fmt in ADAPTER_WEIGHTS:
        if (path / name).is_file():
            tensors, starts = read_weights(path, [path / name], fmt, None, role)
            weights = Checkpoint(path, {}, tensors, format=fmt, weight_files=[path / name], data_starts=starts)
            break
    else:
        raise InputError(f"--{role} {path.name}: {ADAPTER_CONFIG} but no adapter_model.safetensors or .bin")
    adapter = Adapter(path, config, weights)
    _classify(adapter, role)
    return adapter


def _read_config(path: Path, role: str) -> dict[str, Any]:
    where = f"--{role} {path.name}: {ADAPTER_CONFIG}"
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{where} is not readable JSON ({err})") from err
    if not isinstance(config, dict):
        raise InputError(f"{where} is not a JSON object")
    kind = config.get("peft_type")
    if kind is None and ("lora_parameters" in config or "fine_tune_type" in config):
        raise InputError(
            f"--{role} {path.name} is an MLX LoRA adapter (mlx_lm), not a PEFT one: fuse it with mlx_lm.fuse, or "
            "convert it to PEFT first"
        )
    if kind != "LORA":
        raise InputError(
            f"--{role} {path.name} is a PEFT {kind} adapter; expo reads LoRA adapters only (merge it "
            "into a full checkpoint with PEFT first)"
        )
    check_config(config, where)
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise InputError(f"{where}: {key} must be a positive number, found {value!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(key) or {}, dict):
            raise InputError(f"{where}: {key} must be an object")
    return config


def scaling(config: dict[str, Any], module: str, where: str = ADAPTER_CONFIG) -> tuple[int, float]:
    """(rank, s) of one module, as PEFT's `update_layer` computes them (patterns as the saving version reads them)."""
    rank, alpha = module_rank_and_alpha(config, module, where)
    return rank, alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _classify(adapter: Adapter, role: str) -> None:
    """Sort the adapter's tensors by what they do to which base tensor (shapes are checked against the base later)."""
    where = f"--{role} {adapter.path.name}"
    parts: dict[str, dict[str, TensorInfo]] = {}
    prefixed = [key.startswith(PREFIX) for key in adapter.weights.tensors]
    if any(prefixed) and not all(prefixed):  # PEFT writes the prefix; transformers' adapter integration does not
        key = next(k for k in adapter.weights.tensors if not k.startswith(PREFIX))
        raise InputError(
            f"{where}: tensor {key!r} lacks the {PREFIX!r} prefix the others have; not a PEFT adapter file"
        )
    adapter.prefix = PREFIX if any(prefixed) else ""
    for key, info in adapter.weights.tensors.items():
        name = key[len(adapter.prefix) :]
        if ".original_module." in name:  # PEFT's copy of a module to save as it was: the base itself
            continue
        name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)  # the trained copy, read as PEFT loads it
        if not info.is_float:
            raise InputError(f"{where}: tensor {key!r} is {info.dtype}, not floating")
        for suffix, part in (
            (".lora_A.weight", "A"),
            (".lora_B.weight", "B"),
            (".lora_embedding_A", "A"),
            (".lora_embedding_B", "B"),
            (".lora_magnitude_vector.weight", "m"),
            (".lora_magnitude_vector", "m"),
        ):
            if name.endswith(suffix):
                module = name[: -len(suffix)]
                parts.setdefault(module, {})[part] = info
                if "embedding" in suffix:
                    parts[module]["embedding"] = info
                break
        else:
            if name.endswith(".lora_B.bias"):
                module = name[: -len(".lora_B.bias")]
                scale = scaling(adapter.config, module, where)[1]
                adapter.bias_updates[f"{module}.bias"] = (info, scale)
            elif ".lora_" in name:
                raise InputError(f"{where}: tensor {key!r} is not a LoRA factor expo knows")
            else:  # saved whole: modules_to_save copies, trained biases, an embedding's unchanged base
                adapter.whole[name.replace(".base_layer.", ".")] = info
    for module, found in parts.items():
        if "A" not in found or "B" not in found:
            missing = "lora_A" if "A" not in found else "lora_B"
            raise InputError(f"{where}: module {module!r} has no {missing} tensor")
        rank, scale = scaling(adapter.config, module, where)
        a, b = found["A"], found["B"]
        if len(a.shape) > 2 or len(b.shape) > 2:
            raise InputError(
                f"{where}: module {module!r} is a convolution (LoRA factors {a.shape}, "
                f"{b.shape}); expo merges LoRA on linear and embedding layers: merge it with PEFT first"
            )
        if adapter.dora and "m" not in found:
            raise InputError(
                f"{where}: use_dora but module {module!r} has no lora_magnitude_vector (PEFT "
                "would start it from the base weight's row norms); save the adapter again with PEFT"
            )
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise MismatchError(
                f"{where}: module {module!r}: lora_A {a.shape} and lora_B {b.shape} do not multiply (rank mismatch)"
            )
        if a.shape[0] != rank:
            raise MismatchError(
                f"{where}: module {module!r} has rank {a.shape[0]} but its config (r, rank_pattern) says {rank}"
            )
        if "m" in found and adapter.dora is False:
            raise InputError(f"{where}: DoRA magnitudes but use_dora is false in the config")
        adapter.low_rank[f"{module}.weight"] = LowRank(a, b, scale, "embedding" in found, found.get("m"))


def check_against(adapter: Adapter, base: TensorSource, role: str, base_label: str) -> None:
    """Every update must fit its base tensor: present, same shape (transposed where the layer stores it so)."""
    where = f"--{role} {adapter.path.name}"
    _tie(adapter, base, where)
    for name, update in adapter.low_rank.items():
        info = base.tensors.get(name)
        if info is None:
            raise MismatchError(
                f"{where}: updates {name!r}, which {base_label} does not have; is this adapter for another model?"
            )
        out_features, in_features = update.b.shape[0], update.a.shape[1]
        if len(info.shape) != 2 or not info.is_float:
            raise MismatchError(f"{where}: {name!r} is {info.shape} {info.dtype} in {base_label}; not a LoRA target")
        plain, flipped = info.shape == (out_features, in_features), info.shape == (in_features, out_features)
        if update.transposed and not flipped or not update.transposed and not (plain or flipped):
            raise MismatchError(
                f"{where}: {name!r} is {info.shape} in {base_label}, but its LoRA factors make "
                f"{(out_features, in_features)}; is this adapter for another model?"
            )
        if not update.transposed and flipped and (not plain or _is_conv1d(adapter, base, name, where)):
            update = LowRank(update.a, update.b, update.scale, True, update.magnitude)  # GPT-2 Conv1D
            adapter.low_rank[name] = update
        if update.magnitude is not None:
            if update.transposed:
                raise InputError(
                    f"{where}: DoRA on {name!r}, a transposed (Conv1D or embedding) layer, is not "
                    "supported; merge the adapter with PEFT first"
                )
            if update.magnitude.shape != (out_features,):
                raise MismatchError(f"{where}: the DoRA magnitude of {name!r} has shape {update.magnitude.shape}")
    for name, (bias, _) in adapter.bias_updates.items():
        if name not in base.tensors or base.tensors[name].shape != bias.shape:
            raise MismatchError(f"{where}: a LoRA bias for {name!r}, which {base_label} lacks or shapes otherwise")
    for name, info in adapter.whole.items():
        held = base.tensors.get(name)
        if held is None:
            raise MismatchError(f"{where}: saves {name!r} whole, but {base_label} has no such tensor")
        if held.shape != info.shape:
            raise MismatchError(f"{where}: {name!r} is {info.shape} in the adapter but {held.shape} in {base_label}")


def _tie(adapter: Adapter, base: TensorSource, where: str) -> None:
    """A tied model's head is its input embedding: PEFT merges a LoRA on the head into that one parameter, so the
    update goes to the embedding (and to a duplicate head the checkpoint may store, which transformers discards
    when it ties them again). What PEFT does not merge into one parameter is refused."""
    missing = any(name not in base.tensors for name in adapter.changed)
    known = architecture(base.path) if missing or _may_tie(base.config or {}) else None
    if known is None or known.tied is None:
        return
    head, embedding = known.tied
    saved = adapter.config.get("modules_to_save") or []
    tied_modules = [n.removesuffix(".weight") for n in (head, embedding)]
    if any(m == s or m.endswith(f".{s}") for m in tied_modules for s in saved) or (
        adapter.config.get("ensure_weight_tying") and set(adapter.low_rank) & {head, embedding}
    ):
        raise InputError(
            f"{where}: modules_to_save (or ensure_weight_tying) on the tied embeddings {head!r} and {embedding!r}: "
            "PEFT unties them in ways a checkpoint does not keep; merge the adapter with PEFT and untie first"
        )
    if head not in adapter.low_rank:
        return
    if embedding in adapter.low_rank:
        raise InputError(
            f"{where}: LoRA on both the head {head!r} and the embedding {embedding!r}, which are one tied "
            "parameter; merge the adapter with PEFT first"
        )
    update = adapter.low_rank.pop(head)
    adapter.low_rank[embedding] = update
    if head in base.tensors:  # a stored duplicate of the tied head: kept equal to the embedding
        adapter.low_rank[head] = update
    else:  # PEFT saved the head's base layer, which is the embedding itself
        adapter.whole.pop(head, None)


def _may_tie(config: dict[str, Any]) -> bool:
    """Whether a config.json may tie the head to the input embedding (when it does not say, the class default
    decides: ask the architecture)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))


def _is_conv1d(adapter: Adapter, base: TensorSource, name: str, where: str) -> bool:
    """Whether a square target is stored (in, out), as GPT-2's Conv1D stores it. Its shape cannot tell, and the saved
    fan_in_fan_out is PEFT's last-created layer's (a Linear after a Conv1D resets it): ask the base architecture."""
    known = architecture(base.path)
    if known is not None:
        return known.is_conv1d(name.removesuffix(".weight"))
    flipped_elsewhere = any(u.transposed and n in base.tensors for n, u in adapter.low_rank.items())
    if adapter.config.get("fan_in_fan_out") or flipped_elsewhere:
        raise InputError(
            f"{where}: cannot tell whether the square {name!r} is a Conv1D layer stored transposed (transformers "
            "cannot build the base architecture from its config.json); merge the adapter with PEFT first"
        )
    return False


class LoraSource:
    """θ_base + s·B·A (and the adapter's whole tensors) under the base's names, shapes and dtypes."""

    def __init__(self, base: TensorSource, adapter: Adapter) -> None:
        self.base = base
        self.adapter = adapter
        self.path = adapter.path
        self.config = base.config
        self.tensors = base.tensors

    @property
    def readable(self) -> bool:
        return self.base.readable

    def __enter__(self) -> LoraSource:
        self.base.__enter__()
        self.adapter.weights.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.adapter.weights.close()
        self.base.__exit__(*exc)

    def flat(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        """The tensor as PEFT merges it: the saved whole tensor or the base one, plus the low-rank update."""
        name = info.name
        if name in self.adapter.low_rank:
            return self._low_rank(info, self.adapter.low_rank[name], start, stop)
        if name in self.adapter.bias_updates:
            bias, scale = self.adapter.bias_updates[name]
            base = self._origin(info, start, stop)
            wide = compute_dtype(base.dtype)
            return base.to(wide) + scale * self.adapter.weights.flat(bias, start, stop).to(wide)
        return self._origin(info, start, stop)

    def _origin(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        """What the update applies to: the tensor the adapter saved whole (a trained bias, a module to save, an
        embedding's base layer), else the base model's."""
        whole = self.adapter.whole.get(info.name)
        return self.adapter.weights.flat(whole, start, stop) if whole else self.base.flat(info, start, stop)

    def _low_rank(self, info: TensorInfo, update: LowRank, start: int, stop: int) -> torch.Tensor:
        """Rows [start // cols, ceil(stop / cols)) of W + s·B·A (DoRA: rescaled per row), cut to [start, stop)."""
        cols = info.shape[1]
        first, last = start // cols, -(-stop // cols)
        base = self._origin(info, first * cols, last * cols)
        wide = compute_dtype(base.dtype)
        weights = self.adapter.weights
        a = weights.flat(update.a, 0, update.a.numel).to(wide).view(update.a.shape)
        b = weights.flat(update.b, 0, update.b.numel).to(wide).view(update.b.shape)
        if update.transposed:  # W is (in, out): rows of W are columns of A
            delta = (b @ a[:, first:last]).T
        else:
            delta = b[first:last] @ a
        rows = base.to(wide).view(last - first, cols) + update.scale * delta
        if update.magnitude is not None:  # DoRA: each output row scaled to its magnitude
            magnitude = weights.flat(update.magnitude, first, last).to(wide)
            rows = rows * (magnitude / rows.norm(dim=1)).unsqueeze(1)
        return rows.reshape(-1)[start - first * cols : stop - first * cols]

    def raw(self, info: TensorInfo, start: int, stop: int) -> memoryview:
        if info.name not in self.adapter.changed:
            return self.base.raw(info, start, stop)
        return rounded_bytes(self.flat(info, start, stop), info.dtype)

    def prefetch(self, info: TensorInfo, start: int, stop: int) -> None:
        if info.name not in self.adapter.whole:
            self.base.prefetch(info, start, stop)


def own_tensors(source: TensorSource) -> dict[str, TensorInfo]:
    """The tensors that identify an input in the provenance: an adapter's own, not its base's."""
    return source.adapter.weights.tensors if isinstance(source, LoraSource) else source.tensors


def input_folders(source: TensorSource) -> list[Path]:
    """The folders an input is made of, outermost first: an adapter's, then its base's."""
    return [source.path, *input_folders(source.base)] if isinstance(source, LoraSource) else [source.path]


def _root(source: TensorSource) -> TensorSource:
    return _root(source.base) if isinstance(source, LoraSource) else source


def changed_tensors(sft: TensorSource, aligned: TensorSource) -> set[str] | None:
    """The tensors that can differ between the two inputs when adapters sit on one shared base (None: any)."""
    if not isinstance(aligned, LoraSource) and not isinstance(sft, LoraSource) or _root(sft) is not _root(aligned):
        return None
    changed: set[str] = set()
    for source in (sft, aligned):
        while isinstance(source, LoraSource):
            changed |= source.adapter.changed
            source = source.base
    return changed
