"""The held-out confirmation against pure noise, over many seeds (the figures in issue 21's closing note).

    python dev/noise_experiment.py [--seeds 500]

A flat α curve, a reward of pure noise seeded per response, eight candidates, 200 prompts (140 to choose, 60 held
out): how often the rule before confirmation "found" a winner (a marginal interval excluding 0 on all prompts), how
often the new rule chose an α > 0, and how often the held-out prompts confirmed it. The same construction as
tests/test_selection.py, which checks it on 100 seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from expo_cli.tuning.decision.procedure import choose  # noqa: E402
from test_selection import GRID, constructed, old_rule_finds_a_winner  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=500)
    seeds = parser.parse_args().seeds
    found = chosen = confirmed = 0
    for seed in range(seeds):
        evaluate, parts = constructed(lambda alpha: 0.0, seed)
        outcome = choose(evaluate, GRID, len(GRID), parts, seed, draws=1000)
        chosen += outcome.recommendation.alpha != 0
        confirmed += outcome.confirmation.confirmed
        found += old_rule_finds_a_winner(evaluate, parts)
    print(f"{seeds} seeds of pure noise, {len(GRID) - 1} candidates besides α = 0, 200 prompts:")
    print(f"  old rule (best of K, marginal interval, all prompts) found a winner: {found / seeds:.1%}")
    print(f"  new rule chose an α > 0 on the selection prompts:                   {chosen / seeds:.1%}")
    print(f"  ... and the held-out prompts confirmed it:                          {confirmed / seeds:.1%}")


if __name__ == "__main__":
    main()
