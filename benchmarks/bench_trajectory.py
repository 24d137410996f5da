"""`expo merge --trajectory` and `--delta-rank` against a two-point merge: wall time and memory, in one run.

    python benchmarks/bench_trajectory.py [--layers 2 8] [--hidden 512] [--repeat 3]

Builds (once, cached in benchmarks/.cache/trajectory-L<layers>) four bfloat16 Llama checkpoints of one "run" (a
drift along one direction plus noise), for each number of layers: the tensor count grows with the layers, the
largest matrix (the embedding) does not. With the page cache warmed before every run (`bench_merge.warm`), it
times `expo merge` of the first and last checkpoint at α = 1, the same with `--delta-rank 4`, and `--trajectory`
through all four to the step of α = 1. Peak RSS and peak anonymous memory (RssAnon: what the process itself holds,
not the page cache's mapped input pages) come from `bench_merge.run_tool`. A trajectory holds k widened blocks, and
--delta-rank one matrix at a time (about four float32 copies of the largest): neither grows with the tensor count.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_merge import CACHE, run_tool, warm  # noqa: E402

STEPS = (0, 10, 20, 30)


def build(layers: int, hidden: int) -> list[Path]:
    """Four checkpoints at STEPS (cached)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = CACHE / f"trajectory-L{layers}-h{hidden}"
    folders = [root / f"step-{s}" for s in STEPS]
    if all((f / "config.json").exists() for f in folders):
        return folders
    shutil.rmtree(root, ignore_errors=True)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=8,
        vocab_size=16000,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    start = LlamaForCausalLM(config).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(1)
    directions = {n: torch.randn(p.shape, generator=generator) * 1e-4 for n, p in start.named_parameters()}
    for step, folder in zip(STEPS, folders, strict=True):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        with torch.no_grad():
            for name, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=generator) * 3e-5
                param.copy_(start.state_dict()[name].float() + directions[name] * step + noise)
        model.save_pretrained(folder, max_shard_size="200MB")
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    expo = str(Path(sys.executable).with_name("expo"))
    print("| layers | tensors | merge | wall s (median) | peak RSS MiB | peak RssAnon MiB | wall vs two-point |")
    print("|---|---|---|---|---|---|---|")
    for layers in args.layers:
        folders = build(layers, args.hidden)
        tensors = 2 + 9 * layers + 1
        trajectory = [a for s, f in zip(STEPS, folders, strict=True) for a in ("--trajectory", f"{s}={f}")]
        runs = {
            "two-point, α = 1": ["--sft", str(folders[0]), "--aligned", str(folders[-1]), "--alpha", "1"],
            "two-point, --delta-rank 4": [
                *("--sft", str(folders[0]), "--aligned", str(folders[-1]), "--alpha", "1", "--delta-rank", "4")
            ],
            "trajectory of 4, to step 60": [*trajectory, "--to-step", "60"],
        }
        base = None
        for label, options in runs.items():
            measured = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
                    warm(*folders)
                    measured.append(run_tool([expo, "merge", *options, "-o", f"{scratch}/out", "-q"], False))
            wall = statistics.median(m["wall"] for m in measured)
            base = base or wall
            rss = max(m["rss_mib"] for m in measured)
            anon = max(m["anon_mib"] for m in measured)
            print(f"| {layers} | {tensors} | {label} | {wall:.2f} | {rss:.0f} | {anon:.0f} | {wall / base:.2f}× |")


if __name__ == "__main__":
    main()
