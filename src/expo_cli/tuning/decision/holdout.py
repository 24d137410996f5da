"""Which prompts a tune uses, and which of them choose α and which confirm it.

`--limit N` draws a seeded random sample (a dataset's first N records are often one topic or one source). The
prompts are then split, seeded and by prompt, into a selection part, on which every candidate is generated and α
is chosen, and a held-out confirmation part, on which only α = 0 and the chosen α are generated: the chosen α's
gain there is free of the selection's optimism. By default 30% are held out when there are at least 100 prompts;
fewer are too few to split usefully, and nothing is held out (the result then says that nothing was confirmed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...errors import UsageError

DEFAULT_FRACTION = 0.3
DEFAULT_FROM = 100  # prompts at which the default starts holding some out
FEW = 50  # fewer prompts than this on either side: warn


def sample(count: int, limit: int | None, seed: int) -> list[int]:
    """Indices of a seeded random sample of `limit` of `count` records, in their original order (all without a
    limit)."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted(np.random.default_rng(seed).choice(count, size=limit, replace=False).tolist())


@dataclass(frozen=True)
class Split:
    """Indices into the prompts: the selection part and the held-out confirmation part, each in prompt order."""

    selection: list[int]
    confirmation: list[int]
    fraction: float

    def to_json(self) -> dict[str, float | int]:
        return {"fraction": self.fraction, "selection": len(self.selection), "confirmation": len(self.confirmation)}


def split(count: int, fraction: float | None, seed: int, warn: Callable[[str], None]) -> Split:
    """Split `count` prompts, holding out `fraction` of them (None: the default for that many)."""
    if fraction is None:
        fraction = DEFAULT_FRACTION if count >= DEFAULT_FROM else 0.0
    if not 0 <= fraction < 1:
        raise UsageError(f"--holdout {fraction:g}: must be at least 0 and less than 1")
    held = round(fraction * count)
    if fraction > 0 and not 0 < held < count:
        raise UsageError(f"--holdout {fraction:g} of {count} prompts leaves one part empty: use more prompts")
    order = np.random.default_rng(seed).permutation(count)
    parts = Split(sorted(order[held:].tolist()), sorted(order[:held].tolist()), fraction)
    small = [f"{name} {len(p)}" for name, p in (("selection", parts.selection), ("held-out", parts.confirmation)) if p]
    if any(len(p) < FEW for p in (parts.selection, parts.confirmation) if p):
        warn(f"few prompts ({', '.join(small)}): fewer than {FEW} on a side give wide intervals")
    return parts
