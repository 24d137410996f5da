"""One short GPU run: `expo merge --device cuda` checked against the CPU result and the float64 reference.

    python benchmarks/gpu_check.py [--size 2gb] [--summary gpu_check.json]

Builds the benchmark pair, merges it on the CPU and on the GPU (each timed as a whole `expo` process, output
fsync-ed, page cache warm), and prints: wall times and GB/s, the share of GPU output elements bit-identical to
the CPU output, and each output checked against the float64 reference rounded once to bfloat16. It fails (exit 1)
unless the GPU output is bit-identical to the CPU output and every element of each is within one rounding step of
the reference (what `expo verify` accepts), and writes what it measured to --summary either way.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--summary", type=Path, default=Path("gpu_check.json"), help="where the results go")
    args = parser.parse_args()
    summary: dict = {"devices": {}, "failures": []}
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
            summary["devices"][device] = {"wall_seconds": [t["wall"] for t in times], "gb_per_s": moved / best / 1e9}
        if {"cpu", "cuda"} <= outs.keys():
            identical = bit_identical(outs["cpu"], outs["cuda"])
            summary["bit_identical"] = identical
            print(f"GPU output bit-identical to CPU output: {100 * identical:.4f}%")
            if identical != 1.0:
                summary["failures"].append(f"GPU output differs from the CPU output in {1 - identical:.3%} elements")
        for device, out in outs.items():
            check = check_output(out, sft, aligned, args.alpha)
            summary["devices"][device]["reference"] = check
            print(
                f"{device} vs float64 reference: {100 * check['exact']:.4f}% correctly rounded, "
                f"max error {check['max_ulp']:.2f} rounding steps"
            )
            if check["max_ulp"] > 1:  # what `expo verify` accepts: float32 arithmetic rounded once
                summary["failures"].append(f"{device}: an element {check['max_ulp']:.2f} rounding steps off")
    args.summary.write_text(json.dumps(summary, indent=2, default=str))
    for failure in summary["failures"]:
        print(f"FAILED: {failure}", file=sys.stderr)
    sys.exit(1 if summary["failures"] else 0)


if __name__ == "__main__":
    main()
