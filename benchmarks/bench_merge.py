"""Benchmark `expo merge` against the I/O floor and its peers, on the same pair, in one run.

    python benchmarks/bench_merge.py [--repeat 3] [--sizes small,2gb] [--alpha 0.5] [--baseline OTHER/src]
        [--streams 1,4] [--max-shard-size 500MB] [--expo-only]

Builds (once, cached in benchmarks/.cache) Llama-architecture bfloat16 pairs saved by transformers with different
shard sizes for the two models, the aligned one a small perturbation of the SFT one. For each pair it measures,
with the page cache warmed the same way before every run (all input files read once):

1. the I/O floor: reading every input byte once, plus writing and fsync-ing an output of the aligned model's size;
2. `expo merge --alpha A` (it fsyncs its output itself);
3. mergekit `task_arithmetic` at float32 precision, when mergekit is installed (never a dependency);
4. the official ExPO approach: both models loaded with transformers in bfloat16, a loop, `save_pretrained`.

"Durable" time is the wall time plus a `sync` afterwards for tools that do not fsync themselves. Peak RSS comes
from wait4(); peak anonymous memory (RssAnon: memory-mapped input pages are the page cache's, not the tool's) is
sampled from /proc every 5 ms; "CPU busy" is the tool's CPU seconds (user + system, from wait4) over wall time ×
the cores it may use. Every output is checked against the float64 reference of the formula rounded once
to bfloat16: the share of elements equal to it, and the largest difference in units of the last place.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
SIZES = {
    # name: (hidden, intermediate, layers, heads, vocab, sft shard size, aligned shard size)
    "small": (512, 1376, 4, 8, 16000, "20MB", "50MB"),
    "2gb": (2048, 5632, 16, 16, 32000, "400MB", "1GB"),
    "6gb": (3072, 8192, 26, 24, 32000, "2GB", "5GB"),
}


def build_pair(name: str) -> tuple[Path, Path]:
    """A cached SFT/aligned pair: random Llama weights, aligned = SFT + a small step, sharded differently."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = CACHE / name
    sft, aligned = root / "sft", root / "aligned"
    if (aligned / "config.json").exists():
        return sft, aligned
    shutil.rmtree(root, ignore_errors=True)
    hidden, intermediate, layers, heads, vocab, sft_shard, aligned_shard = SIZES[name]
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=vocab,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).mul_(0.02))
        model.save_pretrained(sft, max_shard_size=sft_shard)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=torch.float32).mul_(0.002).to(p.dtype))
        model.save_pretrained(aligned, max_shard_size=aligned_shard)
    return sft, aligned


def weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def warm(*folders: Path) -> None:
    """Same start for every run: earlier writes on disk (`sync`), every input file read once (warm cache)."""
    subprocess.run(["sync"], check=True)
    buffer = bytearray(64 << 20)
    for folder in folders:
        for file in weight_files(folder):
            with open(file, "rb", buffering=0) as fh:
                while fh.readinto(buffer):
                    pass


def io_floor(sft: Path, aligned: Path, out: Path) -> float:
    """Read every input byte once, write and fsync the aligned model's bytes: what no tool can beat."""
    buffer = bytearray(64 << 20)
    view = memoryview(buffer)
    started = time.perf_counter()
    for file in weight_files(sft):
        with open(file, "rb", buffering=0) as fh:
            while fh.readinto(buffer):
                pass
    out.mkdir(parents=True)
    for file in weight_files(aligned):
        with open(file, "rb", buffering=0) as src, open(out / file.name, "wb", buffering=0) as dst:
            while n := src.readinto(buffer):
                dst.write(view[:n])
            os.fsync(dst.fileno())
    return time.perf_counter() - started


def run_tool(command: list[str], durable_sync: bool) -> dict:
    """Run a command; wall time (+ sync when the tool does not fsync), peak RSS and peak RssAnon in MiB."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_anon = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_anon
        while not done.is_set():
            try:
                with open(f"/proc/{proc.pid}/status") as fh:
                    for line in fh:
                        if line.startswith("RssAnon:"):
                            peak_anon = max(peak_anon, int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    seconds = time.perf_counter() - started
    if durable_sync:
        subprocess.run(["sync"], check=True)
    durable = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command[0]} failed: {stderr[-2000:]}")
    cpu = (usage.ru_utime + usage.ru_stime) / (seconds * len(os.sched_getaffinity(0)))  # share of the machine busy
    return {
        "wall": seconds,
        "durable": durable,
        "rss_mib": usage.ru_maxrss / 1024,
        "anon_mib": peak_anon / 1024,
        "cpu": cpu,
    }


def check_output(out: Path, sft: Path, aligned: Path, alpha: float) -> dict:
    """Share of output elements equal to the float64 reference rounded once to bfloat16, and the worst ulp."""
    import torch
    from safetensors import safe_open

    def tensors(folder: Path) -> dict[str, Path]:
        found = {}
        for file in weight_files(folder):
            with safe_open(file, framework="pt") as f:
                found.update(dict.fromkeys(f.keys(), file))
        return found

    outs, sfts, aligneds = tensors(out), tensors(sft), tensors(aligned)
    if set(outs) != set(aligneds):
        return {"exact": 0.0, "max_ulp": float("inf"), "note": "tensor names differ from the aligned model"}
    equal = total = 0
    worst = 0.0
    for name, file in outs.items():
        with safe_open(file, "pt") as fo, safe_open(sfts[name], "pt") as fs, safe_open(aligneds[name], "pt") as fa:
            o, s, a = fo.get_tensor(name), fs.get_tensor(name), fa.get_tensor(name)
        for start in range(0, o.shape[0], 1024):
            rows = slice(start, start + 1024)
            ref = a[rows].double() + alpha * (a[rows].double() - s[rows].double())
            rounded = ref.to(torch.bfloat16)
            got = o[rows].to(torch.bfloat16)
            equal += int((got == rounded).sum())
            total += got.numel()
            # In units of one rounding step at the result plus float32's own error on the inputs' scale (a result
            # that cancels to ~0 cannot be closer): 0.5 = correctly rounded, <= 1 = what `expo verify` accepts.
            inputs = a[rows].double().abs() + abs(alpha) * (a[rows].double() - s[rows].double()).abs()
            ulp = torch.finfo(torch.bfloat16).eps * torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(1e-38))))
            worst = max(worst, float(((got.double() - ref).abs() / (ulp + 2**-23 * inputs)).max()))
    return {"exact": equal / total, "max_ulp": worst}


def tools(
    sft: Path,
    aligned: Path,
    out: Path,
    alpha: float,
    work: Path,
    mergekit: str | None,
    baseline: Path | None = None,
    streams: Sequence[int] = (),
    shard_size: str | None = None,
) -> dict:
    """name -> (command, needs a sync to be durable)."""
    found = {
        "expo merge": (
            [
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
                str(alpha),
                "--quiet",
                "--device",
                "cpu",
            ],
            False,
        ),
        "expo merge, sweep of 3 (α = 0.1,0.3,0.5)": (
            [
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
                "0.1,0.3,0.5",
                "--quiet",
                "--device",
                "cpu",
            ],
            False,
        ),
        "official ExPO (transformers, bf16)": (
            [sys.executable, str(HERE / "official_expo.py"), str(sft), str(aligned), str(out), str(alpha)],
            True,
        ),
    }
    if shard_size:  # several output shards, as a large model has: what parallel shard streams work on
        for name in [n for n in found if n.startswith("expo")]:
            found[name] = ([*found[name][0], "--max-shard-size", shard_size], False)
    for count in streams:  # parallel shard streams against one (the default is measured as "expo merge")
        found[f"expo merge --streams {count}"] = ([*found["expo merge"][0], "--streams", str(count)], False)
    if baseline:  # another expo (e.g. a checkout of the previous commit's src/), interleaved with this one
        for name in [n for n in found if n.startswith("expo") and "--streams" not in n]:
            command, sync = found[name]
            found[f"{name} [baseline {baseline.parent.name}]"] = (["env", f"PYTHONPATH={baseline}", *command], sync)
    if mergekit:
        config = work / "mergekit.yml"
        config.write_text(
            f"merge_method: task_arithmetic\nbase_model: {sft}\nmodels:\n  - model: {aligned}\n"
            f"    parameters:\n      weight: {1 + alpha}\nparameters:\n  normalize: false\n"
            "dtype: float32\nout_dtype: bfloat16\n"
        )
        found["mergekit task_arithmetic (fp32)"] = ([mergekit, str(config), str(out), "--no-copy-tokenizer"], True)
    return found


def bench_pair(
    name: str,
    alpha: float,
    repeat: int,
    work: Path,
    mergekit: str | None,
    expo_only: bool,
    baseline: Path | None = None,
    streams: Sequence[int] = (),
    shard_size: str | None = None,
) -> list[dict]:
    """Floor and expo runs interleaved (floor, merge, sweep, floor, ...) so that all see the same disk: a cloud disk's
    speed drifts over minutes. Peers are slow and run once, after."""
    sft, aligned = build_pair(name)
    size = sum(f.stat().st_size for f in weight_files(aligned))
    out = work / "out"
    commands = tools(sft, aligned, out, alpha, work, mergekit, baseline, streams, shard_size)
    ours = [t for t in commands if t.startswith("expo")]
    peers = [] if name == "small" or expo_only else [t for t in commands if t not in ours]  # small: memory only
    runs: dict[str, list[dict]] = {"floor": [], **{t: [] for t in commands}}
    checks = {}
    for tool in ["floor", *ours] * repeat + peers:
        shutil.rmtree(out, ignore_errors=True)
        warm(sft, aligned)
        if tool == "floor":
            seconds = io_floor(sft, aligned, out)
            runs["floor"].append({"durable": seconds})
            continue
        command, needs_sync = commands[tool]
        runs[tool].append(run_tool(command, needs_sync))
        if tool not in checks:
            sweep = "sweep" in tool
            checks[tool] = (
                check_output(out / "alpha-0.5", sft, aligned, 0.5) if sweep else check_output(out, sft, aligned, alpha)
            )
    shutil.rmtree(out, ignore_errors=True)
    floors = [r["durable"] for r in runs["floor"]]
    floor = statistics.median(floors)
    rows = [
        {
            "pair": name,
            "tool": "I/O floor (read inputs, write+fsync output)",
            "durable": floors,
            "ratio": 1.0,
            "rss_mib": None,
            "anon_mib": None,
            "cpu": None,
            "exact": None,
        }
    ]
    for tool in [*ours, *peers]:
        durable = [r["durable"] for r in runs[tool]]
        rows.append(
            {
                "pair": name,
                "tool": tool,
                "durable": durable,
                "ratio": statistics.median(durable) / floor,
                "rss_mib": max(r["rss_mib"] for r in runs[tool]),
                "anon_mib": max(r["anon_mib"] for r in runs[tool]),
                "cpu": statistics.median(r["cpu"] for r in runs[tool]),
                "exact": checks[tool]["exact"],
                "max_ulp": checks[tool]["max_ulp"],
            }
        )
    for row in rows:
        row["model_gb"] = size / 1e9
    return rows


def sweep_ratios(rows: list[dict]) -> list[str]:
    """A sweep of 3 against 3 single merges, measured in the same run."""
    lines = []
    for pair in dict.fromkeys(r["pair"] for r in rows):
        single = [r for r in rows if r["pair"] == pair and r["tool"] == "expo merge"]
        sweep = [r for r in rows if r["pair"] == pair and "sweep" in r["tool"]]
        if single and sweep:
            ratio = statistics.median(sweep[0]["durable"]) / statistics.median(single[0]["durable"])
            lines.append(f"{pair}: a sweep of 3 α takes {ratio:.2f}× one merge (3 single merges: 3.00×)")
    return lines


def table(rows: list[dict]) -> str:
    lines = [
        "| pair | tool | durable s (median [min–max]) | × I/O floor | CPU busy | peak RSS MiB | peak RssAnon MiB "
        "| exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["durable"]
        times = f"{statistics.median(d):.2f} [{min(d):.2f}–{max(d):.2f}]"
        exact = "" if r["exact"] is None else f"{100 * r['exact']:.4f}% (max error {r['max_ulp']:.2f})"
        rss = "" if r["rss_mib"] is None else f"{r['rss_mib']:.0f}"
        anon = "" if r["anon_mib"] is None else f"{r['anon_mib']:.0f}"
        cpu = "" if r["cpu"] is None else f"{r['cpu']:.0%}"
        lines.append(
            f"| {r['pair']} ({r['model_gb']:.2f} GB) | {r['tool']} | {times} | {r['ratio']:.2f} | {cpu} | {rss} "
            f"| {anon} | {exact} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,2gb", help=f"comma list of {', '.join(SIZES)}")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--mergekit", default=shutil.which("mergekit-yaml"), help="mergekit-yaml to compare with")
    parser.add_argument("--expo-only", action="store_true", help="measure the floor and expo only (quick)")
    parser.add_argument("--baseline", type=Path, help="another expo's src/ folder to measure in the same run")
    parser.add_argument("--max-shard-size", help="expo's output shard size (default: expo's own, one 2 GB shard)")
    parser.add_argument("--streams", default="", help="also expo merge --streams N for each N of this comma list")
    args = parser.parse_args()
    streams = [int(n) for n in args.streams.split(",") if n]
    rows = []
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        for name in args.sizes.split(","):
            rows += bench_pair(
                name,
                args.alpha,
                args.repeat,
                Path(tmp),
                args.mergekit,
                args.expo_only,
                args.baseline,
                streams,
                args.max_shard_size,
            )
    print(table(rows))
    print()
    print("\n".join(sweep_ratios(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
