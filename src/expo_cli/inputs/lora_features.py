"""What expo does with each PEFT LoRA configuration feature: one table, read by the adapter reader (to refuse before
any work) and rendered into the README's LoRA section (`markdown`, checked by a test), so the two never disagree.

A feature is refused when the adapter's update is not θ_base + s·B·A as expo computes it (PEFT rewrites the base,
applies the update only to some tokens, routes between adapters, or cannot merge it), so that expo never gives a
different model than `PeftModel.from_pretrained(base, adapter).merge_and_unload()` without a word.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

# Initialisations after which PEFT rewrites the base weights when it loads the adapter: Δ is not s·B·A.
BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


@dataclass(frozen=True)
class Feature:
    key: str  # the adapter_config.json field
    name: str
    supported: bool
    why: str
    on: Callable[[Any], bool] = bool  # whether the field's value turns the feature on


def _rewrites_base(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(BASE_REWRITING_INITS)


FEATURES = (
    Feature("use_rslora", "rsLoRA", True, "s = lora_alpha/√r"),
    Feature(
        "rank_pattern",
        "per-module rank",
        True,
        "keys matched as the PEFT version that saved it (peft_version) matched them",
    ),
    Feature(
        "alpha_pattern",
        "per-module alpha",
        True,
        "keys matched as the PEFT version that saved it (peft_version) matched them",
    ),
    Feature("use_dora", "DoRA", True, "exact in a merged output; refused with --as-adapter (not linear in B)"),
    Feature("lora_bias", "LoRA bias", True, "bias += s·lora_B.bias"),
    Feature("bias", "trained biases", True, "saved whole, extrapolated against the base bias", lambda v: v != "none"),
    Feature("modules_to_save", "modules saved whole", True, "extrapolated against the base module"),
    Feature("fan_in_fan_out", "Conv1D layers", True, "orientation taken from the base architecture, not the flag"),
    Feature("layers_to_transform", "some layers only", True, "the adapter holds exactly those layers' factors"),
    Feature(
        "init_lora_weights",
        "PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA initialisations",
        False,
        "PEFT rewrites the base weights when it loads the adapter, so its update is not s·B·A; convert it with PEFT "
        "(path_initial_model_for_weight_conversion) or merge it first",
        _rewrites_base,
    ),
    Feature(
        "alora_invocation_tokens",
        "aLoRA",
        False,
        "it acts only on tokens after its invocation sequence, and PEFT refuses to merge it",
    ),
    Feature("arrow_config", "Arrow routing", False, "it routes each token among several adapters: no single merge"),
    Feature("use_qalora", "QALoRA", False, "its A acts on pooled inputs of a quantized layer, so Δ is not s·B·A"),
    Feature("use_bdlora", "block-diagonal LoRA", False, "its factors are block-diagonal shards: merge it with PEFT"),
    Feature("kasa_config", "KaSA", False, "it truncates the base's singular values and scales between A and B"),
    Feature("monteclora_config", "MonteCLoRA", False, "its factors are sampled: merge it with PEFT"),
    Feature("megatron_config", "Megatron parallel layers", False, "sharded parallel layers: merge it with PEFT"),
    Feature("trainable_token_indices", "trainable tokens", False, "merge the adapter with PEFT first"),
    Feature("layer_replication", "layer replication", False, "its layers are copies the base does not have"),
    Feature("target_parameters", "LoRA on parameters", False, "merge the adapter with PEFT first"),
)


def check_config(config: dict[str, Any], where: str) -> None:
    """Refuse, by name and before any tensor is read, every feature expo cannot merge exactly."""
    for feature in FEATURES:
        value = config.get(feature.key)
        if not feature.supported and value is not None and feature.on(value):
            shown = f"={value!r}" if isinstance(value, (str, bool)) else ""
            raise InputError(f"{where}: {feature.name} ({feature.key}{shown}) is not supported: {feature.why}")


def markdown() -> str:
    """The README's list of what is supported and refused."""
    supported = [f for f in FEATURES if f.supported]
    refused = [f for f in FEATURES if not f.supported]
    lines = ["| adapter feature (`adapter_config.json`) | expo |", "|---|---|"]
    lines += [f"| {f.name} (`{f.key}`) | supported: {f.why} |" for f in supported]
    lines += [f"| {f.name} (`{f.key}`) | refused before any work: {f.why} |" for f in refused]
    return "\n".join(lines)
