"""A set of weight files an output gets: the paired inputs and the shards planned for them."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.pairing import Pairing
from ..core.sources import TensorSource
from ..core.writer import Shard


@dataclass
class WeightSet:
    """One set of weight files the output gets: the Hugging Face shards, or Mistral's consolidated files."""

    sft: TensorSource
    aligned: TensorSource
    pairing: Pairing
    shards: list[Shard]
    index_name: str | None  # written when there are several shards

    @property
    def bytes_written(self) -> int:
        return sum(s.size for s in self.shards)
