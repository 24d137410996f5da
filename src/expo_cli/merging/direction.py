"""Which input came first: evidence in the inputs' own metadata that --sft and --aligned were given swapped.

Swapped inputs merge without any error (the pair matches either way) and give θ_sft − α·Δ, the opposite of what was
asked. Many checkpoints say what they were trained from: a model card's `base_model` (written by the Trainer and the
Hub) and a config's `_name_or_path` (written by transformers before v5). When the SFT input names the aligned one as
its origin, and not the other way round, the merge stops before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .card import AlignedCard


@dataclass(frozen=True)
class Named:
    """An input as the user named it, and what its metadata says it came from."""

    spec: str  # as typed: a folder or a repo id
    hub_id: str | None  # --sft-id / --aligned-id
    origins: list[tuple[str, str]]  # (where it is said, the model named)

    @classmethod
    def of(cls, spec: str, hub_id: str | None, config: dict[str, Any], folder: Path | None) -> Named:
        """Its origins from `config` and, for a readable local folder, its model card."""
        origins = []
        if isinstance(name := config.get("_name_or_path"), str) and name:
            origins.append(("config.json _name_or_path", name))
        card = AlignedCard.read(folder) if folder is not None and folder.is_dir() else AlignedCard({}, "")
        bases = card.data.get("base_model")
        for base in bases if isinstance(bases, list) else [bases]:
            if isinstance(base, str) and base:
                origins.append(("model card base_model", base))
        return cls(spec, hub_id, origins)

    def is_named(self, name: str) -> bool:
        """Whether `name` (a path or a repo id) names this input: equal, or the same last component."""
        wanted = _last(name)
        return any(
            candidate and (candidate == name or _last(candidate) == wanted)
            for candidate in (self.spec, self.hub_id.partition("@")[0] if self.hub_id else None)
        )

    def origin_naming(self, other: Named) -> tuple[str, str] | None:
        """Where this input says it was trained from `other` (and not from itself, which would be no evidence)."""
        return next(((w, n) for w, n in self.origins if other.is_named(n) and not self.is_named(n)), None)


def _last(name: str) -> str:
    return Path(name.rstrip("/")).name.lower()


def swapped(sft: Named, aligned: Named) -> str | None:
    """The one-line reason to think the inputs are swapped, or None when nothing says so."""
    claim = sft.origin_naming(aligned)
    if claim is None or aligned.origin_naming(sft) is not None:
        return None
    where, name = claim
    return (
        f"--sft {sft.spec} and --aligned {aligned.spec} look swapped: {sft.spec}'s {where} says it was trained from "
        f"{name}; swap them, or pass --force if they are right"
    )
