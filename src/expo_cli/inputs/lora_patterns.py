"""`rank_pattern` and `alpha_pattern` read as the PEFT version that saved the adapter read them.

PEFT changed how a pattern key matches a module name:
- from 0.15: each dict on its own, the first key with `re.match(rf"(.*\\.)?({key})$", module)`;
- 0.14: each dict on its own, the first key with `re.match(rf".*\\.{key}$", module)` (a key must follow a dot, so
  a key naming a module from its first character never matches);
- up to 0.13: one key is chosen, with the 0.14 rule, from the rank keys then the alpha keys together, and both
  the rank and the alpha are looked up under that one key (so an alpha key is ignored when a rank key matched
  first).
The adapter's `peft_version` (written by recent PEFT) selects the rule. Without it, the module's (rank, alpha) under
every rule must agree; when they do not, the adapter is refused with the module named (never a silent guess).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..constants import ADAPTER_CONFIG
from ..errors import InputError

RULES = ("0.13", "0.14", "0.15")  # each the first version of its rule (0.13: that version and earlier)


def _matches(rule: str, key: str, module: str) -> bool:
    try:
        if rule == "0.15":
            return re.match(rf"(.*\.)?({key})$", module) is not None
        return re.match(rf".*\.{key}$", module) is not None
    except re.error as err:
        raise InputError(f"{ADAPTER_CONFIG}: pattern {key!r} is not a valid regular expression ({err})") from err


def _first(rule: str, keys: Iterable[str], module: str) -> str | None:
    return next((key for key in keys if _matches(rule, key, module)), None)


def rank_and_alpha(config: dict[str, Any], module: str, rule: str) -> tuple[Any, Any]:
    """(r, lora_alpha) of one module under one version's rule."""
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    if rule == "0.13":
        key = _first(rule, [*ranks, *alphas], module)
        return ranks.get(key, config["r"]), alphas.get(key, config["lora_alpha"])
    rank_key, alpha_key = _first(rule, ranks, module), _first(rule, alphas, module)
    return (
        ranks[rank_key] if rank_key is not None else config["r"],
        alphas[alpha_key] if alpha_key is not None else config["lora_alpha"],
    )


def rule_of(config: dict[str, Any]) -> str | None:
    """The matching rule of the PEFT version that saved the adapter; None when it is not recorded (or unreadable)."""
    version = config.get("peft_version")
    found = re.match(r"(\d+)\.(\d+)", version) if isinstance(version, str) else None
    if found is None:
        return None
    major, minor = int(found[1]), int(found[2])
    if (major, minor) >= (0, 15):
        return "0.15"
    return "0.14" if (major, minor) == (0, 14) else "0.13"


def module_rank_and_alpha(config: dict[str, Any], module: str, where: str) -> tuple[Any, Any]:
    """(r, lora_alpha) of one module as PEFT reads it; refused when the saving version is unknown and matters."""
    if not config.get("rank_pattern") and not config.get("alpha_pattern"):
        return config["r"], config["lora_alpha"]
    rule = rule_of(config)
    if rule is not None:
        return rank_and_alpha(config, module, rule)
    readings = {r: rank_and_alpha(config, module, r) for r in RULES}
    if len(set(readings.values())) > 1:
        shown = "; ".join(f"PEFT {r}{'+' if r == '0.15' else ''}: r={v[0]}, alpha={v[1]}" for r, v in readings.items())
        raise InputError(
            f"{where}: no peft_version, and PEFT versions read rank_pattern/alpha_pattern differently for module "
            f'{module!r} ({shown}); add the "peft_version" that saved it to {ADAPTER_CONFIG}'
        )
    return readings["0.15"]
