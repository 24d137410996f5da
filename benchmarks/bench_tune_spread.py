"""`expo tune` in one process against K worker processes (`--data-parallel K`), and what finishing a job array costs.

    python benchmarks/bench_tune_spread.py [--prompts 64] [--alphas 0.1,0.3,0.5] [--workers 2]

Each run is `expo tune` in a subprocess on the same pair, prompts and settings as `bench_tune.py` (a tiny reward
model, temperature 1, `--device cpu --dtype float32`, batches of 8 prompts, no held-out prompts below 100), into
its own new run folder: first in one process (torch's threads over every core), then with `--data-parallel K`
(each worker pinned to its share of the cores). Both must print the same result (timings aside): the script checks
it. Then the same tune as a 2-part job array run one part after the other: the wall time of the part that does
not finish, of the part that finishes (its share, then the statistics), and of `--finish` run again on the
finished folder (start-up, reading the run folder and the statistics: the cost of finishing apart from the work).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples"))

from bench_tune import build_large_pair, build_reward_model, write_prompts  # noqa: E402
from make_tiny_pair import main as make_tiny_pair  # noqa: E402


def run(args: list[str]) -> tuple[dict, float, list[float]]:
    """expo tune's report, its wall time, and the seconds of each candidate a worker said it evaluated."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "expo_cli", *args, "--json"]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    )
    wall = time.perf_counter() - started
    if done.returncode not in (0, 8):
        raise SystemExit(f"expo {' '.join(args[:1])} failed ({done.returncode}): {done.stderr[-2000:]}")
    said = [float(s) for s in re.findall(r"evaluated \(\d+ responses, ([\d.]+) s\)", done.stderr)]
    return json.loads(done.stdout), wall, said


def per_candidate(report: dict) -> float:
    """The mean seconds a candidate took in one process (the command's own timings)."""
    timings = [t for t in report["timing"].values() if t["generate_seconds"]]
    return sum(t["update_seconds"] + t["generate_seconds"] + t["score_seconds"] for t in timings) / len(timings)


def comparable(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("timing", "run")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--alphas", default="0.1,0.3,0.5")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--pairs", default="example,large", help="comma list: example, large")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.prompts} prompts, α 0,{args.alphas}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prompts = write_prompts(root / "prompts.jsonl", args.prompts)
        rm = build_reward_model(root / "rm")
        pairs = {}
        if "example" in args.pairs:
            make_tiny_pair(root / "tiny")
            pairs["example pair"] = (root / "tiny" / "sft", root / "tiny" / "aligned")
        if "large" in args.pairs:
            pairs[f"Llama {args.layers}×{args.hidden}"] = build_large_pair(root / "large", args.hidden, args.layers)
        for name, (sft, aligned) in pairs.items():
            base = ["tune", "--sft", str(sft), "--aligned", str(aligned), "--prompts", str(prompts)]
            base += ["--reward-model", str(rm), "--alpha", args.alphas, "--max-new-tokens", str(args.max_new_tokens)]
            base += ["--temperature", "1", "--batch-size", "8", "--dtype", "float32", "--device", "cpu"]
            tag = name.split()[0]
            one, one_wall, _ = run([*base, "--run-dir", str(root / f"{tag}-one")])
            dp = ["--run-dir", str(root / f"{tag}-dp"), "--data-parallel", str(args.workers)]
            many, many_wall, worker_seconds = run([*base, *dp])
            same = comparable(one) == comparable(many)
            print(
                f"\n{name}: one process {one_wall:.1f} s; --data-parallel {args.workers} {many_wall:.1f} s "
                f"({one_wall / many_wall:.2f}× faster); same result: {same}"
            )
            print(
                f"  seconds per candidate (update + generate + score): one process {per_candidate(one):.2f}, "
                f"a worker on its share of the cores {sum(worker_seconds) / len(worker_seconds):.2f}"
            )
            if not same:
                raise SystemExit("the results differ")
            folder = str(root / f"{tag}-parts")
            first = run([*base, "--run-dir", folder, "--part", "1/2"])[1]
            last = run([*base, "--run-dir", folder, "--part", "2/2"])[1]
            finish = run([*base, "--run-dir", folder, "--finish"])[1]
            print(
                f"  2-part array: part 1 (not finishing) {first:.1f} s, part 2 (finishing) {last:.1f} s; "
                f"--finish on the finished folder {finish:.1f} s ({finish / one_wall:.1%} of the one-process tune)"
            )


if __name__ == "__main__":
    main()
