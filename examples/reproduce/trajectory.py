"""Beyond two points: does extrapolating a DPO trajectory, or a low-rank update, beat ExPO? Measured on the toy task.

    pip install -e '.[reproduce]'
    python examples/reproduce/trajectory.py --out runs/trajectory          # two seeds, ~15 minutes on 2 CPU cores
    python examples/reproduce/trajectory.py --out runs/quick --quick       # one small seed (~3 minutes)

The training of run.py (SFT, then DPO with TRL), saving the policy at 5%, 10%, 15%, 20% and 100% of its steps.
Every model below is scored on the same 400 test prompts with the same sampling seeds (so every comparison is
paired), with 95% bootstrap intervals from expo's own statistics, against full DPO and against two-point ExPO
from the 20% snapshot (α chosen by `expo tune` on 200 dev prompts, as in run.py):

(a) the least-squares line through the 5–20% snapshots, extrapolated to the full run's step (`expo merge
    --trajectory … --to-step`; nothing tuned), and the same line at the step `expo tune --trajectory` chose on dev;
(b) two-point ExPO from the 20% snapshot with `--delta-rank` 1, 4 and 16 (α chosen on dev at each rank), with the
    share of the update's energy each rank keeps;
(c) R² of the per-tensor linear fit through the four snapshots (1 − residual / total sum of squares over a tensor's
    elements), its median by layer type.

Everything it prints is also written to OUT/trajectory.json. A seed whose snapshots OUT already holds is not trained
again (--retrain does); the tunes resume from their run folders.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import QUICK, Settings, quiet_libraries, sampling, train  # noqa: E402

import expo_cli  # noqa: E402
from expo_cli.tuning.decision.statistics import Bootstrap  # noqa: E402

SNAPSHOTS = (0.05, 0.1, 0.15, 0.2, 1.0)
FIT = SNAPSHOTS[:4]  # the trajectory: the first 20% of the run
RANKS = (1, 4, 16)
TYPES = (  # layer types, first match wins
    ("q/k/v", re.compile(r"(q|k|v)_proj")),
    ("o", re.compile(r"o_proj")),
    ("gate/up", re.compile(r"(gate|up)_proj")),
    ("down", re.compile(r"down_proj")),
    ("norm", re.compile(r"norm")),
    ("embed/head", re.compile(r"embed|lm_head")),
)
SILENT = {"progress": False, "info": lambda _: None, "warn": lambda _: None}


def step_of(fraction: float, settings: Settings) -> int:
    return round(fraction * settings.dpo_steps)  # where run.train saved the snapshot


def r_squared(folder: Path, settings: Settings) -> dict[str, dict[str, float]]:
    """Per layer type: the median (and range) over its tensors of the linear fit's R² through the snapshots."""
    from safetensors.torch import load_file

    snapshots = [load_file(folder / f"dpo-{round(100 * f)}" / "model.safetensors") for f in FIT]
    steps = torch.tensor([float(step_of(f, settings)) for f in FIT], dtype=torch.float64)
    centred = steps - steps.mean()
    by_type: dict[str, list[float]] = {}
    for name in snapshots[0]:
        values = torch.stack([s[name].double().reshape(-1) for s in snapshots])  # (k, elements)
        mean = values.mean(0)
        slope = (centred[:, None] * (values - mean)).sum(0) / (centred**2).sum()
        residual = values - (mean + slope * centred[:, None])
        total = float(((values - mean) ** 2).sum())
        if total == 0:
            continue
        kind = next((label for label, pattern in TYPES if pattern.search(name)), "other")
        by_type.setdefault(kind, []).append(1 - float((residual**2).sum()) / total)
    return {
        kind: {"median": float(np.median(v)), "min": min(v), "max": max(v), "tensors": len(v)}
        for kind, v in by_type.items()
    }


def choose(folder: Path, settings: Settings, grader: str, name: str, **inputs) -> float:
    """The α expo tune chooses on the dev prompts (α = 0 when nothing beats the baseline)."""
    tuned = expo_cli.tune(
        prompts=str(folder / "dev.jsonl"),
        reward_fn=grader,
        search=True,
        budget=settings.budget,
        decoding=sampling(settings),
        holdout=0.3,
        run_dir=folder / "runs" / f"{name}-dev",
        **inputs,
        **SILENT,
    )
    return tuned.alpha


def score(folder: Path, settings: Settings, grader: str, name: str, alpha: float, **inputs) -> tuple[np.ndarray, ...]:
    """Per-prompt test rewards of α = 0 and of `alpha` (the same sampling seeds as every other model)."""
    tested = expo_cli.tune(
        prompts=str(folder / "test.jsonl"),
        reward_fn=grader,
        alphas=[alpha] if alpha != 0 else [-1.0],
        decoding=sampling(settings),
        holdout=0.0,
        run_dir=folder / "runs" / f"{name}-test",
        **inputs,
        **SILENT,
    )
    rewards = {
        a: tested.outcome.selection[a].scores(range(settings.test)).prompt_rewards for a in tested.outcome.selection
    }
    return rewards[0.0], rewards[alpha]


def measure(folder: Path, seed: int, settings: Settings, grader: str, say) -> dict:
    sft, twenty, full = folder / "sft", folder / "dpo-20", folder / "dpo-100"
    trajectory = [f"{step_of(f, settings)}={folder / f'dpo-{round(100 * f)}'}" for f in FIT]
    full_step = settings.dpo_steps
    test: dict[str, np.ndarray] = {}
    chosen: dict[str, float] = {}
    started = time.perf_counter()
    dpo_20, test["sft"] = score(folder, settings, grader, "sft", -1.0, sft=sft, aligned=twenty)
    test["dpo-20"] = dpo_20
    test["dpo-100"], _ = score(folder, settings, grader, "dpo-100", -1.0, sft=sft, aligned=full)
    chosen["expo-20"] = choose(folder, settings, grader, "expo-20", sft=sft, aligned=twenty, alphas=settings.grid)
    _, test["expo-20"] = score(folder, settings, grader, "expo-20", chosen["expo-20"], sft=sft, aligned=twenty)
    say(f"seed {seed}: baselines, ExPO from 20% at α = {chosen['expo-20']:g}, {time.perf_counter() - started:.0f} s")

    steps = [step_of(f, settings) for f in FIT]
    to_full = (full_step - steps[-1]) / (steps[-1] - steps[0])  # the α of the line at the full run's step
    line = {"sft": None, "aligned": None, "trajectory": trajectory}
    chosen["line to 100%"] = to_full  # not tuned: the full run's step
    _, test["line to 100%"] = score(folder, settings, grader, "line", to_full, **line)
    targets = np.linspace(steps[-1] * 2, full_step * 2, len(settings.grid))  # as many candidates as ExPO's grid
    grid = [float((t - steps[-1]) / (steps[-1] - steps[0])) for t in targets]
    chosen["line, step tuned"] = choose(folder, settings, grader, "line", alphas=grid, **line)
    _, test["line, step tuned"] = score(folder, settings, grader, "line-tuned", chosen["line, step tuned"], **line)
    say(f"seed {seed}: trajectory, {time.perf_counter() - started:.0f} s")

    energy = {}
    for rank in RANKS:
        label = f"rank {rank}"
        chosen[label] = choose(
            folder, settings, grader, label, sft=sft, aligned=twenty, alphas=settings.grid, delta_rank=rank
        )
        _, test[label] = score(
            folder, settings, grader, label, chosen[label], sft=sft, aligned=twenty, delta_rank=rank
        )
        inspected = expo_cli.inspect(sft, twenty, delta_rank=rank, progress=False)
        energy[label] = {f"{g.layer}:{g.kind}": g.energy_kept for g in inspected.groups if g.energy_kept is not None}
        say(f"seed {seed}: {label}, {time.perf_counter() - started:.0f} s")

    boot = Bootstrap(settings.test, draws=5000, seed=seed)
    rows = []
    for label, rewards in test.items():
        rows.append(
            {
                "model": label,
                "alpha": chosen.get(label),
                "to_step": steps[-1] + chosen[label] * (steps[-1] - steps[0])
                if label == "line, step tuned"
                else (full_step if label == "line to 100%" else None),
                "reward": boot.mean(rewards).__dict__,
                "vs_dpo_100": boot.mean(rewards - test["dpo-100"]).__dict__,
                "vs_expo_20": boot.mean(rewards - test["expo-20"]).__dict__,
            }
        )
    return {
        "seed": seed,
        "steps": {"fit": steps, "full": full_step},
        "rows": rows,
        "energy_kept": {label: float(np.median(list(groups.values()))) for label, groups in energy.items()},
        "r_squared": r_squared(folder, settings),
    }


def table(result: dict) -> list[str]:
    def ci(value: dict, signed: bool = True) -> str:
        f = "+.3f" if signed else ".3f"
        return f"{value['estimate']:{f}} [{value['low']:{f}}, {value['high']:{f}}]"

    fit = ", ".join(str(s) for s in result["steps"]["fit"])
    lines = [
        f"seed {result['seed']} (fit on steps {fit}; full run {result['steps']['full']} steps):",
        "| model | α (dev) | test reward [95% CI] | vs DPO-100% [95% CI] | vs ExPO from 20% [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        alpha = "" if row["alpha"] is None else f"{row['alpha']:.3g}"
        if row["to_step"] is not None:
            alpha += f" (step {row['to_step']:.0f})"
        lines.append(
            f"| {row['model']} | {alpha} | {ci(row['reward'], False)} | {ci(row['vs_dpo_100'])} | "
            f"{ci(row['vs_expo_20'])} |"
        )
    kept = ", ".join(f"{label}: {share:.0%}" for label, share in result["energy_kept"].items())
    lines.append(f"Update energy kept (median over layer groups): {kept}")
    lines.append(
        "R² of the linear fit per tensor (median [min, max]): "
        + "; ".join(
            f"{kind} {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}]" for kind, r in result["r_squared"].items()
        )
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/trajectory"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--quick", action="store_true", help="one small seed (~3 minutes)")
    parser.add_argument("--retrain", action="store_true", help="train again even where OUT has the snapshots")
    args = parser.parse_args()
    settings = QUICK if args.quick else Settings()
    quiet_libraries()
    seeds = args.seeds[:1] if args.quick else args.seeds
    grader = f"{HERE / 'task.py'}:gold_reward"
    started = time.perf_counter()
    results = []
    for seed in seeds:
        folder = args.out / f"seed-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
        if args.retrain or not all((folder / f"dpo-{round(100 * f)}" / "config.json").exists() for f in SNAPSHOTS):
            train(folder, seed, settings, say, fractions=SNAPSHOTS)
        results.append(measure(folder, seed, settings, grader, say))
        for line in table(results[-1]):
            print(line)
    summary = {"settings": settings.__dict__, "results": results, "seconds": time.perf_counter() - started}
    (args.out / "trajectory.json").write_text(json.dumps(summary, indent=2))
    print(f"Total {summary['seconds'] / 60:.1f} min; {args.out / 'trajectory.json'}")


if __name__ == "__main__":
    main()
