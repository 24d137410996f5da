"""The decision rule's error rates and power by simulation (the table in issue 35's closing note and the README).

    python dev/simulate_tune.py [--runs 300] [--draws 2000]

Rewards are `tests/simulated.py`'s: gains in SDs of the per-prompt gain, 4 samples per prompt, the default 70/30
split. Each case runs the whole procedure (`procedure.choose`: grid, statistics, rule, held-out confirmation) over
seeded runs and counts which α was chosen and how often it was confirmed.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from expo_cli.tuning.decision.procedure import choose  # noqa: E402
from simulated import constructed  # noqa: E402

CASES = {
    "null, 7 candidates, 200 prompts": (dict.fromkeys((0, 0.1, 0.2, 0.3, 0.5, 1, 2, 4), 0.0), 200),
    "peak 0.3 at α=0.3, 0.17 at 0.1 and 0.5, 100 prompts": ({0: 0, 0.1: 0.17, 0.3: 0.3, 0.5: 0.17}, 100),
    "the same peak, 333 prompts": ({0: 0, 0.1: 0.17, 0.3: 0.3, 0.5: 0.17}, 333),
    "peak 0.5 at α=0.3, 100 prompts": ({0: 0, 0.1: 0.28, 0.3: 0.5, 0.5: 0.28}, 100),
    "plateau 0.3 from α=0.1, 333 prompts": ({0: 0, 0.1: 0.3, 0.3: 0.3, 0.5: 0.3}, 333),
}


def run_case(gains: dict[float, float], prompts: int, runs: int, draws: int) -> tuple[Counter, int]:
    chosen: Counter = Counter()
    confirmed = 0
    for seed in range(runs):
        evaluate, parts = constructed(lambda alpha: gains[alpha], seed, prompts=prompts)
        outcome = choose(evaluate, sorted(gains), len(gains), parts, seed, draws=draws)
        chosen[outcome.recommendation.alpha] += 1
        confirmed += outcome.confirmation.confirmed
    return chosen, confirmed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args()
    print(f"| case ({args.runs} runs) | α chosen (share of runs) | confirmed |")
    print("|---|---|---|")
    for name, (gains, prompts) in CASES.items():
        chosen, confirmed = run_case({float(a): g for a, g in gains.items()}, prompts, args.runs, args.draws)
        shares = ", ".join(f"{a:g}: {n / args.runs:.0%}" for a, n in sorted(chosen.items()))
        print(f"| {name} | {shares} | {confirmed / args.runs:.1%} |", flush=True)


if __name__ == "__main__":
    main()
