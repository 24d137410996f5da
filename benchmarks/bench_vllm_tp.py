"""What one in-place update costs each tensor-parallel worker of `expo tune --backend vllm`: every worker
computing whole tensors (as before) against each computing only the block its loaders keep (rank-sliced).

    .venv-vllm/bin/python benchmarks/bench_vllm_tp.py [--tp 2] [--hidden 2048 --layers 4] [--updates 4]

Builds a bfloat16 Llama pair (width `--hidden`, `--layers` layers), starts one engine per mode on the aligned
model at `--tp` workers (vLLM's CPU build runs tensor parallelism too), sets α to 0.5, 1, 0.5, ... and reports,
per worker and mode, the median over the updates after the first (which also learns the slices): the update's
seconds (θ(α), vLLM's loading and processing, the checks), θ(α)'s own seconds, the seconds spent fingerprinting
expo's values for the check, and the bytes of the checkpoints its arithmetic read (the elements of the blocks it
computed). `--cold` empties the page cache before each update, so that θ(α) reads from the disk. Then it checks
the two modes generate the same greedy tokens. Ratios are sliced / whole, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
sys.path.insert(0, str(HERE))

from bench_tune import build_large_pair  # noqa: E402
from make_tiny_pair import tokenizer  # noqa: E402


def measure(sft: Path, aligned: Path, tp: int, sliced: bool, updates: int, cold: bool) -> tuple[list[dict], list[str]]:
    from expo_cli.merging.api import prepare
    from expo_cli.options import MergeOptions
    from expo_cli.tuning.backends.generation import Decoding, encode_prompts
    from expo_cli.tuning.backends.serving import VllmPolicy

    run = prepare(sft, aligned, {}, MergeOptions(progress=False))
    tok = tokenizer()
    ids = encode_prompts(tok, ["the model is", "aligned and extrapolated"], chat_template=False)
    policy = VllmPolicy.start(
        aligned, aligned, tok, "bfloat16", run, Decoding(max_new_tokens=16, temperature=0), ids,
        tensor_parallel_size=tp, sliced=sliced,
    )  # fmt: skip
    try:
        per_update = []
        for i in range(updates):
            if cold:  # every read from the disk: the page cache is emptied first (needs root)
                subprocess.run(["sh", "-c", "sync; echo 1 > /proc/sys/vm/drop_caches"], check=True)
            policy.set_alpha(0.5 if i % 2 == 0 else 1.0, warn=print)
            per_update.append(policy.last_update)
        texts = [r.text for r in policy.batch(0, [0, 1], ids)]
    finally:
        policy.close()
    ranks = []
    for rank in range(tp):
        later = [update[rank] for update in per_update[1:]]
        ranks.append(
            {
                key: statistics.median(u[key] for u in later)
                for key in (
                    "seconds",
                    "compute_seconds",
                    "check_seconds",
                    "bytes_read",
                    "sliced",
                    "regions_checked",
                )
            }
        )
    return ranks, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--cold", action="store_true", help="empty the page cache before each update (root)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        # a divisible MLP width for tensor parallelism; weights large enough for answers to move with α
        sft, aligned = build_large_pair(
            Path(tmp), args.hidden, args.layers, torch.bfloat16, args.hidden * 11 // 4, initializer_range=0.2
        )
        size = sum(f.stat().st_size for f in aligned.glob("*.safetensors"))
        print(f"pair: {args.layers} layers of width {args.hidden}, {size / 1e6:.0f} MB per checkpoint; TP = {args.tp}")
        results = {
            mode: measure(sft, aligned, args.tp, mode == "sliced", args.updates, args.cold)
            for mode in ("whole", "sliced")
        }
    columns = ("seconds", "θ(α) s", "check s", "MB read", "sliced", "checked")
    print(f"{'rank':>4} {'mode':>6} " + " ".join(f"{c:>8}" for c in columns))
    for rank in range(args.tp):
        for mode, (ranks, _) in results.items():
            r = ranks[rank]
            print(
                f"{rank:>4} {mode:>6} {r['seconds']:>8.3f} {r['compute_seconds']:>8.3f} {r['check_seconds']:>8.3f} "
                f"{r['bytes_read'] / 1e6:>8.1f} "
                f"{r['sliced']:>8.0f} {r['regions_checked']:>8.0f}"
            )
        whole, sliced = results["whole"][0][rank], results["sliced"][0][rank]
        print(
            f"rank {rank}: sliced/whole seconds {sliced['seconds'] / whole['seconds']:.2f}, θ(α) seconds "
            f"{sliced['compute_seconds'] / whole['compute_seconds']:.2f}, bytes read "
            f"{sliced['bytes_read'] / whole['bytes_read']:.2f}"
        )
    same = results["whole"][1] == results["sliced"][1]
    print(f"greedy tokens, whole vs sliced: {'identical' if same else 'DIFFERENT'}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
