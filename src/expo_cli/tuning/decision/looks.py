"""The held-out prompts are spent once: every confirmation test made on them is recorded, and a later test of
another hypothesis is corrected for the looks before it.

A look is one test on the held-out prompts: a chosen α against α = 0 on one set of held-out rewards, identified by
the α and a digest of exactly the data tested (both candidates' rewards). Running again repeats that test (the same
data, the same verdict) and is the same look, whatever else changed; choosing another α (another grid, budget,
--search or --margin), judging with another reward, or generating with other settings (the record is kept across
--fresh) gives other data, and is a new look at the same prompts. Were
each look tested at 95%, a user trying settings until one confirms would be fooled more often with every try. So
look k is tested at the one-sided level 2.5% / 2^(k-1) (a two-sided interval of 1 - 5% / 2^(k-1): 95%, 97.5%,
98.75%, ...): the chance that any of the k looks confirms a choice with no real gain stays below
2.5% * (2 - 2^(1-k)) < 5%, whatever the looks were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FIRST_LEVEL = 0.95


def level(number: int) -> float:
    """The two-sided confidence of look `number` (from 1)."""
    return 1 - (1 - FIRST_LEVEL) / 2 ** (number - 1)


def false_confirmation_bound(looks: int) -> float:
    """The most that `looks` looks together confirm a choice with no real gain (one-sided)."""
    return (1 - FIRST_LEVEL) / 2 * (2 - 2 ** (1 - looks))


@dataclass(frozen=True)
class Look:
    number: int
    level: float
    repeated: bool  # the same test as an earlier look (a re-run), not a new one


@dataclass
class Ledger:
    """The looks made on one set of held-out prompts: `records` as kept (oldest first), `keep` to add one."""

    records: list[dict[str, Any]] = field(default_factory=list)
    keep: Callable[[dict[str, Any]], None] = lambda record: None

    def look(self, alpha: float, data: str) -> Look:
        """The look that testing `alpha` on the held-out rewards whose digest is `data` is: an earlier one repeated,
        or the next."""
        for record in self.records:
            if record.get("alpha") == alpha and record.get("data") == data:
                number = int(record["look"])
                return Look(number, level(number), repeated=True)
        number = 1 + max((int(r.get("look", 0)) for r in self.records), default=0)
        return Look(number, level(number), repeated=False)

    def record(self, look: Look, alpha: float, data: str, outcome: dict[str, Any]) -> None:
        """Keep a new look's settings and outcome (a repeated one is already kept)."""
        if look.repeated:
            return
        record = {"look": look.number, "alpha": alpha, "data": data, "level": look.level, **outcome}
        self.records.append(record)
        self.keep(record)
