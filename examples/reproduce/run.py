"""Reproduce the paper's controlled result on a model trained here: DPO with 20% of its steps + ExPO vs full DPO.

    pip install -e '.[reproduce]'                      # trl, datasets, matplotlib (not needed by expo itself)
    python examples/reproduce/run.py --out runs/reproduce           # two seeds, ~6 minutes on 2 CPU cores
    python examples/reproduce/run.py --out runs/quick --quick       # the small variant CI runs (~1.5 minutes)

The task has a gold reward nothing can game by length: the prompt is 4-8 random digits, the ideal response the
digits reversed; the reward is the share of positions right, over the longer of response and target (wrong,
missing and extra digits all cost). A 1.9M-parameter Llama with a character tokenizer learns it from noisy
demonstrations (SFT, TRL's SFTTrainer), then from preference pairs ranked by the gold reward (DPO, TRL's
DPOTrainer: AdamW, cosine schedule with 10% warmup, the shape of the alignment handbook's zephyr-7b-dpo-full),
saving the policy at 10%, 20%, 40% and 100% of its steps. For each snapshot, `expo tune` (reward function = the
gold reward) chooses α on 200 dev prompts; every model is then scored on 400 disjoint test prompts, 4 sampled
responses each (the same seeds for every model, so all comparisons are paired), with 95% bootstrap intervals
from expo's own statistics. Everything it prints is also written to OUT/results.json, a plot to OUT/reproduce.png,
and the 20% snapshot's tune report (every dev answer at every α tried) to OUT/seed-N/report-dpo-20.html.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from task import DIGITS, build_tokenizer, gold_reward, noisy, target  # noqa: E402

import expo_cli  # noqa: E402
from expo_cli.tuning.backends.generation import Decoding  # noqa: E402
from expo_cli.tuning.decision.statistics import Bootstrap  # noqa: E402

FRACTIONS = (0.1, 0.2, 0.4, 1.0)


@dataclass(frozen=True)
class Settings:
    sft_examples: int = 30_000
    sft_lr: float = 1e-3
    pairs: int = 6_000
    dpo_steps: int = 250
    dpo_lr: float = 5e-6
    beta: float = 0.1
    batch: int = 64
    dev: int = 200
    test: int = 400
    samples: int = 4
    grid: tuple[float, ...] = (0.5, 1, 2, 4, 8)
    budget: int = 9  # candidates per snapshot on dev, α = 0 and the grid included
    hidden: int = 192
    layers: int = 4


QUICK = Settings(
    sft_examples=20_000,
    pairs=3_000,
    dpo_steps=100,
    dpo_lr=1e-5,
    dev=128,
    test=128,
    samples=2,
    grid=(1, 3, 6),
    budget=4,
)


def prompts(rng: random.Random, count: int, exclude: set[str]) -> list[str]:
    found: list[str] = []
    while len(found) < count:
        p = "".join(rng.choice(DIGITS) for _ in range(rng.randint(4, 8)))
        if p not in exclude:
            exclude.add(p)
            found.append(p)
    return found


def train(out: Path, seed: int, settings: Settings, say, fractions: tuple[float, ...] = FRACTIONS) -> Path:
    """SFT, then DPO with a snapshot at each of `fractions` of its steps; returns the folder holding sft/ and
    dpo-<pct>/."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback, set_seed
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    rng = random.Random(seed)
    held_out = set()
    dev, test = prompts(rng, settings.dev, held_out), prompts(rng, settings.test, held_out)
    for name, items in (("dev", dev), ("test", test)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in items))
    tokenizer = build_tokenizer()
    set_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden,
        intermediate_size=3 * settings.hidden,
        num_hidden_layers=settings.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    common = {
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "report_to": [],
        "save_strategy": "no",
        "per_device_train_batch_size": settings.batch,
        "logging_steps": 1_000_000,
        "disable_tqdm": True,
        "seed": seed,
    }
    train_prompts = prompts(rng, settings.sft_examples + settings.pairs, set(held_out))
    demonstrations = train_prompts[: settings.sft_examples]
    sft_rows = [{"prompt": f"{p}>", "completion": noisy(rng, target(p))} for p in demonstrations]
    started = time.perf_counter()
    quiet(
        SFTTrainer(
            model=model,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(sft_rows),
            args=SFTConfig(
                output_dir=str(out / "trainer"),
                num_train_epochs=1,
                learning_rate=settings.sft_lr,
                lr_scheduler_type="cosine",
                max_length=32,
                **common,
            ),
        )
    ).train()
    model.save_pretrained(out / "sft")
    tokenizer.save_pretrained(out / "sft")
    say(f"seed {seed}: SFT on {len(sft_rows)} noisy demonstrations in {time.perf_counter() - started:.0f} s")

    pairs = []
    for p in train_prompts[settings.sft_examples :]:
        a, b = noisy(rng, target(p)), noisy(rng, target(p))
        ra, rb = gold_reward(p, a), gold_reward(p, b)
        if ra != rb:  # ranked by the gold reward, ties dropped (as a judge ranks UltraFeedback)
            pairs.append({"prompt": f"{p}>", "chosen": a if ra > rb else b, "rejected": b if ra > rb else a})
    snapshots = {round(f * settings.dpo_steps): f for f in fractions}

    class Snapshots(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in snapshots:
                folder = out / f"dpo-{round(100 * snapshots[state.global_step])}"
                kwargs["model"].save_pretrained(folder)
                tokenizer.save_pretrained(folder)

    started = time.perf_counter()
    policy = LlamaForCausalLM.from_pretrained(out / "sft")
    quiet(
        DPOTrainer(
            model=policy,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(pairs),
            args=DPOConfig(
                output_dir=str(out / "trainer"),
                max_steps=settings.dpo_steps,
                learning_rate=settings.dpo_lr,
                lr_scheduler_type="cosine",
                warmup_steps=settings.dpo_steps // 10,
                beta=settings.beta,
                precompute_ref_log_probs=True,
                max_length=32,
                **common,
            ),
            callbacks=[Snapshots()],
        )
    ).train()
    say(f"seed {seed}: DPO on {len(pairs)} pairs, {settings.dpo_steps} steps in {time.perf_counter() - started:.0f} s")
    return out


def quiet(trainer):
    """Without its progress bar a Trainer prints every log dict on stdout; the tables go there instead."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def sampling(settings: Settings) -> Decoding:
    """How every model answers: sampled (the paper's setting), with the same seeds for every model."""
    return Decoding(
        max_new_tokens=12,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        samples_per_prompt=settings.samples,
        batch_size=200,
        seed=1234,
    )


def evaluate(out: Path, seed: int, settings: Settings, grader: str, say) -> dict:
    """expo tune picks α per snapshot on dev; every model is then scored on test with paired intervals."""
    decoding = sampling(settings)
    quiet = {"progress": False, "info": lambda _: None, "warn": lambda _: None}
    test_rewards: dict[str, np.ndarray] = {}
    lengths: dict[str, float] = {}
    chosen: dict[str, float] = {}
    dev_gain: dict[str, dict] = {}
    for fraction in FRACTIONS:
        name = f"dpo-{round(100 * fraction)}"
        started = time.perf_counter()
        tuned = expo_cli.tune(
            out / "sft",
            out / name,
            str(out / "dev.jsonl"),
            reward_fn=grader,
            alphas=settings.grid,
            search=True,
            budget=settings.budget,
            decoding=decoding,
            holdout=0.3,  # 140 dev prompts choose α, 60 confirm it; the test prompts below are a third, larger set
            run_dir=out / "runs" / f"{name}-dev",
            **quiet,
        )
        chosen[name] = tuned.alpha
        if name == "dpo-20":  # what α does to the 20% snapshot's answers, every dev prompt side by side
            tuned.write_report(out / f"report-{name}.html")
        best = next(s for s in tuned.stats if s.alpha == tuned.alpha)
        dev_gain[name] = {
            "alpha": tuned.alpha,
            "gain": best.gain.__dict__,
            "tried": sorted(tuned.outcome.selection),
            "reason": tuned.outcome.recommendation.reason,
            "confirmed": tuned.confirmed,
            "held_out": tuned.outcome.confirmation.note,
        }
        alphas = [a for a in (tuned.alpha,) if a != 0] + ([-1.0] if fraction == FRACTIONS[0] else [])
        tested = expo_cli.tune(
            out / "sft",
            out / name,
            str(out / "test.jsonl"),
            reward_fn=grader,
            alphas=alphas,
            decoding=decoding,
            holdout=0.0,
            run_dir=out / "runs" / f"{name}-test",
            **quiet,
        )
        for stat in tested.stats:
            label = {0.0: name, -1.0: "sft"}.get(stat.alpha, f"{name} + ExPO")
            test_rewards[label] = tested.outcome.selection[stat.alpha].scores(range(settings.test)).prompt_rewards
            lengths[label] = stat.length
        if tuned.alpha == 0:  # no α beat the snapshot on dev: ExPO leaves it as it is
            test_rewards[f"{name} + ExPO"], lengths[f"{name} + ExPO"] = test_rewards[name], lengths[name]
        say(
            f"seed {seed}: {name}: α* = {tuned.alpha:g} on dev ({len(tuned.outcome.selection)} candidates), "
            f"{time.perf_counter() - started:.0f} s"
        )
    boot = Bootstrap(settings.test, draws=5000, seed=seed)
    full = test_rewards["dpo-100"]
    rows = []
    for label, rewards in test_rewards.items():
        mean = boot.mean(rewards)
        versus = boot.mean(rewards - full)
        rows.append(
            {
                "model": label,
                "alpha": chosen.get(label.split(" ")[0]) if "ExPO" in label else None,
                "reward": mean.__dict__,
                "vs_dpo_100": versus.__dict__,
                "length": lengths[label],
            }
        )
    order = ["sft", *(f"dpo-{round(100 * f)}{s}" for f in FRACTIONS for s in ("", " + ExPO"))]
    rows.sort(key=lambda r: order.index(r["model"]))
    twenty = boot.mean(test_rewards.get("dpo-20 + ExPO", test_rewards["dpo-20"]) - full)
    return {
        "seed": seed,
        "rows": rows,
        "dev": dev_gain,
        "20%+ExPO >= 100%": {"holds": twenty.estimate >= 0, "difference": twenty.__dict__},
    }


def table(result: dict) -> list[str]:
    header = "| model | α* (dev) | test reward [95% CI] | Δ vs DPO-100% [95% CI] | length |"
    lines = [f"seed {result['seed']}:", header, "|---|---|---|---|---|"]
    for row in result["rows"]:
        r, v = row["reward"], row["vs_dpo_100"]
        alpha = f"{row['alpha']:g}" if row["alpha"] is not None else ""
        versus = "0" if row["model"] == "dpo-100" else f"{v['estimate']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]"
        reward = f"{r['estimate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
        lines.append(f"| {row['model']} | {alpha} | {reward} | {versus} | {row['length']:.2f} |")
    claim = result["20%+ExPO >= 100%"]
    d = claim["difference"]
    lines.append(
        f"20% + ExPO ≥ 100%: {'yes' if claim['holds'] else 'no'} ({d['estimate']:+.3f} [{d['low']:+.3f}, "
        f"{d['high']:+.3f}])"
    )
    return lines


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for result, color in zip(results, ("tab:blue", "tab:orange", "tab:green"), strict=False):
        rows = {r["model"]: r["reward"]["estimate"] for r in result["rows"]}
        xs = [100 * f for f in FRACTIONS]
        ax.plot(xs, [rows[f"dpo-{round(x)}"] for x in xs], "o-", color=color, label=f"DPO, seed {result['seed']}")
        ax.plot(
            xs,
            [rows.get(f"dpo-{round(x)} + ExPO", rows[f"dpo-{round(x)}"]) for x in xs],
            "s--",
            color=color,
            label=f"DPO + ExPO (α* from dev), seed {result['seed']}",
        )
        ax.axhline(rows["sft"], color=color, linestyle=":", linewidth=1)
    ax.set_xlabel("DPO training steps (% of the full run)")
    ax.set_ylabel("gold reward on test (sampled)")
    ax.set_title("ExPO on a toy SFT → DPO pair (dotted: SFT)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def quiet_libraries() -> None:
    """No progress bars or info logs from datasets and transformers: the tables are the output."""
    import datasets
    from transformers.utils import logging

    datasets.disable_progress_bars()
    logging.disable_progress_bar()
    logging.set_verbosity_error()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--quick", action="store_true", help="the small variant CI runs (one seed, ~1 minute)")
    args = parser.parse_args()
    settings = QUICK if args.quick else Settings()
    quiet_libraries()
    seeds = args.seeds[:1] if args.quick else args.seeds
    torch.set_num_threads(max(1, torch.get_num_threads()))
    grader = f"{HERE / 'task.py'}:gold_reward"
    started = time.perf_counter()
    results = []
    for seed in seeds:
        folder = args.out / f"seed-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        train(folder, seed, settings, lambda m: print(m, file=sys.stderr, flush=True))
        results.append(evaluate(folder, seed, settings, grader, lambda m: print(m, file=sys.stderr, flush=True)))
        for line in table(results[-1]):
            print(line)
    summary = {"settings": settings.__dict__, "results": results, "seconds": time.perf_counter() - started}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    plot(results, args.out / "reproduce.png")
    print(f"Total {summary['seconds'] / 60:.1f} min; {args.out / 'results.json'}, {args.out / 'reproduce.png'}")


if __name__ == "__main__":
    main()
