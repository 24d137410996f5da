"""expo: ExPO model extrapolation for LLM checkpoints, θ_expo = θ_aligned + α·(θ_aligned − θ_sft).

    >>> import expo_cli
    >>> result = expo_cli.merge(sft="./sft", aligned="./dpo", output="./expo", alpha=0.5)
    >>> tuned = expo_cli.tune("./sft", "./dpo", "prompts.jsonl", reward_model="./rm", alphas=[0.1, 0.3, 0.5])

The heavy modules (torch) load on first use, so `expo --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "ExpoError",
    "MergeOptions",
    "MergeResult",
    "Plan",
    "__version__",
    "inspect",
    "merge",
    "finish_parts",
    "merge_part",
    "merge_to_hub",
    "plan",
    "sweep",
    "tune",
    "verify",
]

if TYPE_CHECKING:
    from .analysis import inspect
    from .errors import ExpoError
    from .merging import MergeOptions, MergeResult, Plan, finish_parts, merge, merge_part, merge_to_hub, plan, sweep
    from .tuning import tune
    from .verification import verify


def __getattr__(name: str) -> Any:
    if name in ("merge", "sweep", "plan", "merge_part", "finish_parts", "merge_to_hub", "MergeOptions", "MergeResult",
                "Plan"):  # fmt: skip
        from . import merging

        return getattr(merging, name)
    if name == "inspect":
        from .analysis import inspect

        return inspect
    if name == "tune":
        from .tuning import tune

        return tune
    if name == "verify":
        from .verification import verify

        return verify
    if name == "ExpoError":
        from .errors import ExpoError

        return ExpoError
    raise AttributeError(f"module 'expo_cli' has no attribute {name!r}")
