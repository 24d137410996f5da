"""One short GPU run: `expo merge --device cuda` checked against the CPU result and the float64 reference.

    python benchmarks/gpu_check.py [--size 2gb]

Builds the benchmark pair, merges it on the CPU and on the GPU (each timed as a whole `expo` process, output
fsync-ed, page cache warm), and prints: wall times and GB/s, the share of GPU output elements bit-identical to
the CPU output, and the GPU output checked against the float64 reference rounded once to bfloat16.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from bench_merge import build_pair, check_output, run_tool, warm, weight_files
from safetensors import safe_open


def bit_identical(a: Path, b: Path) -> float:
    equal = total = 0
    for file in weight_files(a):
        with safe_open(file, "pt") as fa, safe_open(b / file.name, "pt") as fb:
            for name in fa.keys():
                x, y = fa.get_tensor(name), fb.get_tensor(name)
                equal += int((x.view(torch.int16) == y.view(torch.int16)).sum())
                total += x.numel()
    return equal / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2gb")
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--devices", default="cpu,cuda")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, CUDA {torch.cuda.is_available()}: "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else '-'}",
        flush=True,
    )
    sft, aligned = build_pair(args.size)
    size = sum(f.stat().st_size for f in weight_files(aligned))
    moved = 3 * size  # bytes read (two inputs) and written
    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for device in args.devices.split(","):
            out = Path(tmp) / device
            command = [
                sys.executable,
                "-m",
                "expo_cli",
                "merge",
                "--sft",
                str(sft),
                "--aligned",
                str(aligned),
                "-o",
                str(out),
                "--alpha",
                str(args.alpha),
                "--quiet",
                "--device",
                device,
            ]
            times = []
            for _ in range(3):
                shutil.rmtree(out, ignore_errors=True)
                warm(sft, aligned)
                times.append(run_tool(command, durable_sync=False))
            best = min(t["wall"] for t in times)
            print(
                f"{device}: wall {[round(t['wall'], 2) for t in times]} s, best {moved / best / 1e9:.2f} GB/s, "
                f"peak RssAnon {max(t['anon_mib'] for t in times):.0f} MiB",
                flush=True,
            )
            outs[device] = out
        if {"cpu", "cuda"} <= outs.keys():
            print(f"GPU output bit-identical to CPU output: {100 * bit_identical(outs['cpu'], outs['cuda']):.4f}%")
        for device, out in outs.items():
            check = check_output(out, sft, aligned, args.alpha)
            print(
                f"{device} vs float64 reference: {100 * check['exact']:.4f}% correctly rounded, "
                f"max error {check['max_ulp']:.2f} rounding steps"
            )


if __name__ == "__main__":
    main()
