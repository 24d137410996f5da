"""expo: ExPO model extrapolation for LLM checkpoints, θ_expo = θ_aligned + α·(θ_aligned − θ_sft).

    >>> import expo_cli
    >>> result = expo_cli.merge(sft="./sft", aligned="./dpo", output="./expo", alpha=0.5)
    >>> tuned = expo_cli.tune("./sft", "./dpo", "prompts.jsonl", reward_model="./rm", alphas=[0.1, 0.3, 0.5])

The heavy modules (torch) load on first use, so `expo --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .constants import VERSION as __version__

# Public name -> the module that defines it, imported on first use (torch loads only when work starts).
_EXPORTS = {
    "ExpoError": "errors",
    "MergeOptions": "options",
    "MergeResult": "merging.api",
    "Plan": "merging.api",
    "finish_parts": "merging.api",
    "merge": "merging.api",
    "merge_part": "merging.api",
    "merge_to_hub": "merging.api",
    "plan": "merging.api",
    "push": "merging.api",
    "sweep": "merging.api",
    "inspect": "inspection",
    "report": "tuning.runs.reporting",
    "tune": "tuning.api",
    "tune_status": "tuning.runs.status",
    "verify": "verification",
}
__all__ = [
    "ExpoError",
    "MergeOptions",
    "MergeResult",
    "Plan",
    "__version__",
    "finish_parts",
    "inspect",
    "merge",
    "merge_part",
    "merge_to_hub",
    "plan",
    "push",
    "report",
    "sweep",
    "tune",
    "tune_status",
    "verify",
]

if TYPE_CHECKING:
    from .errors import ExpoError
    from .inspection import inspect
    from .merging.api import MergeResult, Plan, finish_parts, merge, merge_part, merge_to_hub, plan, push, sweep
    from .options import MergeOptions
    from .tuning.api import tune
    from .tuning.runs.reporting import report
    from .tuning.runs.status import tune_status
    from .verification import verify


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'expo_cli' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
