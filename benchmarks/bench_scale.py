"""Bigger than the disk, bigger than one machine: a streamed Hub-to-Hub merge and a job array, on one pair.

    python benchmarks/bench_scale.py [--size 2gb] [--parts 4] [--max-shard-size 500MB]
    python benchmarks/bench_scale.py --network [--size small] [--latency 0.02] [--bandwidth 20e6]
                                     [--connections 1 4 8] [--no-latency-only] [--baseline OTHER/src] [--repeat 3]

1. The pair (bench_merge.py's cached one) is published to the test Hub of tests/hub_server.py on 127.0.0.1 (in a
   process of its own, as a real Hub is; it shares this machine's cores with expo), then `expo merge --stream
   --push-to-hub` merges it Hub to Hub: wall time, and the peak size of its scratch folder (sampled every 25 ms)
   against the size of one input.
   With --network: streamed merges against the same pair merged locally, in one run: with no added latency, and
   with the server adding --latency seconds to every response and pacing every connection at --bandwidth bytes/s,
   for 1 and several `--connections` (and another expo's src, --baseline, for a before/after): wall time, read
   throughput (both inputs' bytes / wall, and / the seconds from the first range request to the last answer, which
   `--json` reports; an expo before it does not), each against what the connections allow (2 inputs × N ×
   bandwidth), the upload speed, the peak resident memory of the expo process, and the CPU seconds expo and the
   Hub spent (on the same cores: a real Hub spends its own elsewhere).
2. A job array on the local pair: N `expo merge --part I/N` processes started at once (the last one finishes the
   output), against one `expo merge` process, the outputs compared byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_merge import CACHE, build_pair, warm, weight_files  # noqa: E402

from hub_server import WRITE_TOKEN, serve  # noqa: E402

EXPO = [sys.executable, "-m", "expo_cli", "merge", "--quiet", "--device", "cpu"]


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def peak_size(path: Path, done: threading.Event, peak: list[int]) -> None:
    while not done.is_set():
        try:
            peak[0] = max(peak[0], folder_size(path))
        except FileNotFoundError:  # a file removed while being counted
            pass
        time.sleep(0.025)


def peak_anon(pid: int, peak: list[int]) -> None:
    """Peak anonymous memory (RssAnon) of a process, sampled every 25 ms until it exits: what the tool itself holds
    (RSS would also count the page cache of the files it maps)."""
    while True:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return
        time.sleep(0.025)


def serve_pair(sft: Path, aligned: Path, latency: float, bandwidth: float | None) -> None:
    """The test Hub in this process, holding the pair as bench/sft and bench/aligned: its port on stdout, then it
    serves until stdin closes (run by `hub_process`)."""
    hub, server = serve()
    hub.latency, hub.bandwidth, hub.keep_uploads = latency, bandwidth, False
    for repo, folder in (("bench/sft", sft), ("bench/aligned", aligned)):
        hub.create(repo, {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()})
    print(server.server_address[1], flush=True)
    sys.stdin.read()
    server.shutdown()


def hub_process(sft: Path, aligned: Path, latency: float, bandwidth: float | None) -> tuple[subprocess.Popen, int]:
    """The Hub in a process of its own, as a real one is: it does not share an interpreter lock with this
    benchmark's samplers (it still shares the machine's cores with expo). (process, port)"""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(sft), str(aligned), str(latency), str(bandwidth or 0)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, int(proc.stdout.readline())


def streamed(
    sft: Path,
    aligned: Path,
    alpha: float,
    work: Path,
    shard: str,
    latency: float = 0.0,
    bandwidth: float | None = None,
    extra: tuple[str, ...] = (),
    src: Path | None = None,
) -> tuple[float, int, int, dict]:
    """One streamed merge: (wall seconds, peak scratch bytes, peak anonymous memory of the expo process, what the
    merge reports of its network transfers: `--json`'s "network", absent from an expo before it)."""
    server, port = hub_process(sft, aligned, latency, bandwidth)
    hub_setup = cpu_seconds(server.pid)  # publishing the pair, before the merge starts
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_TOKEN": WRITE_TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(work / "hf-home"),
        **({"PYTHONPATH": str(src)} if src else {}),
    }
    scratch = work / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    done, peak = threading.Event(), [0]
    sampler = threading.Thread(target=peak_size, args=(scratch, done, peak), daemon=True)
    sampler.start()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            *EXPO,
            "--sft",
            "bench/sft",
            "--aligned",
            "bench/aligned",
            "--alpha",
            str(alpha),
            "--stream",
            "--push-to-hub",
            "bench/out",
            "--scratch",
            str(scratch),
            "--max-shard-size",
            shard,
            "--json",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
    )
    anon = [0]
    watcher = threading.Thread(target=peak_anon, args=(proc.pid, anon), daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError(f"the streamed merge failed ({status})")
    seconds = time.perf_counter() - started
    network = json.loads(proc.stdout.read()).get("network") or {}
    network["cpu_expo"], network["cpu_hub"] = usage.ru_utime + usage.ru_stime, cpu_seconds(server.pid) - hub_setup
    done.set()
    sampler.join()
    server.communicate()
    return seconds, peak[0], anon[0], network


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def local(sft: Path, aligned: Path, alpha: float, work: Path, shard: str) -> float:
    warm(sft, aligned)
    out = work / "local"
    started = time.perf_counter()
    subprocess.run(
        [*EXPO, "--sft", str(sft), "--aligned", str(aligned), "-o", str(out), "--alpha", str(alpha), "--force"]
        + ["--max-shard-size", shard],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def spread(seconds: list[float]) -> str:
    """The median of sorted timings, and their range when there are several."""
    median = f"{seconds[len(seconds) // 2]:.1f}"
    return median if len(seconds) == 1 else f"{median} ({seconds[0]:.1f}–{seconds[-1]:.1f})"


def network(args: argparse.Namespace, sft: Path, aligned: Path, work: Path) -> None:
    """Streamed against local, with and without a slow link, this expo against --baseline: one table (each
    case's median of --repeat runs, their range in brackets, and the median run's other figures)."""
    read = sum(f.stat().st_size for p in (sft, aligned) for f in weight_files(p))
    print(
        "| run | latency | bandwidth/connection | connections | wall s | read MB/s over the wall | of allowed "
        "| read MB/s while reading | of allowed | upload MB/s | peak RssAnon MB | CPU s: expo, Hub |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    locals_ = sorted(local(sft, aligned, args.alpha, work, args.max_shard_size) for _ in range(args.repeat))
    base = locals_[len(locals_) // 2]
    print(f"| local merge | | | | {spread(locals_)} | | | | | | | |")
    cases = [(0.0, None, n) for n in args.connections] + [(args.latency, args.bandwidth, n) for n in args.connections]
    if args.no_latency_only:
        cases = cases[: len(args.connections)]
    for latency, bandwidth, connections in cases:
        runs = [("expo", None, ("--connections", str(connections)))]
        if args.baseline:
            runs.append((f"baseline {args.baseline.parent.name}", args.baseline, ("--connections", str(connections))))
        for name, src, extra in runs:
            repeats = sorted(
                (
                    streamed(sft, aligned, args.alpha, work, args.max_shard_size, latency, bandwidth, extra, src)
                    for _ in range(args.repeat)
                ),
                key=lambda run: run[0],
            )
            seconds, _, anon, network = repeats[len(repeats) // 2]  # the median run
            reading = network.get("read_bytes", 0) / network["read_seconds"] if network.get("read_seconds") else None
            uploading = network["upload_bytes"] / network["upload_seconds"] if network.get("upload_seconds") else None
            cap = 2 * connections * bandwidth if bandwidth else None  # what the connections allow, both inputs

            def share(rate: float | None, cap: float | None = cap) -> str:
                return f"{rate / cap:.0%}" if rate and cap else ""

            print(
                f"| {name} streamed ({seconds / base:.2f}× local) | {latency * 1000:.0f} ms | "
                f"{bandwidth / 1e6 if bandwidth else 0:.0f} MB/s | {connections} | "
                f"{spread([run[0] for run in repeats])} | "
                f"{read / seconds / 1e6:.0f} | {share(read / seconds)} | "
                f"{f'{reading / 1e6:.0f}' if reading else '–'} | {share(reading)} | "
                f"{f'{uploading / 1e6:.0f}' if uploading else '–'} | {anon / 2**20:.0f} | "
                f"{network['cpu_expo']:.1f}, {network['cpu_hub']:.1f} |",
                flush=True,
            )


def array(sft: Path, aligned: Path, alpha: float, work: Path, parts: int) -> tuple[float, float, bool]:
    single, split = work / "single", work / "split"
    warm(sft, aligned)
    started = time.perf_counter()
    subprocess.run(
        [
            *EXPO,
            "--sft",
            str(sft),
            "--aligned",
            str(aligned),
            "-o",
            str(single),
            "--alpha",
            str(alpha),
            "--max-shard-size",
            "200MB",
        ],
        check=True,
    )
    one = time.perf_counter() - started
    warm(sft, aligned)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                *EXPO,
                "--sft",
                str(sft),
                "--aligned",
                str(aligned),
                "-o",
                str(split),
                "--alpha",
                str(alpha),
                "--max-shard-size",
                "200MB",
                "--part",
                f"{i}/{parts}",
            ]
        )
        for i in range(1, parts + 1)
    ]
    if any(p.wait() for p in procs):
        raise RuntimeError("a part failed")
    many = time.perf_counter() - started
    same = sorted(p.name for p in single.iterdir()) == sorted(p.name for p in split.iterdir()) and all(
        (single / p.name).read_bytes() == (split / p.name).read_bytes() for p in single.iterdir()
    )
    return one, many, same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2gb")
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--max-shard-size", default="500MB", help="of the streamed output: bounds its scratch")
    parser.add_argument("--network", action="store_true", help="streamed merges under latency and bandwidth caps")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the server adds to every response")
    parser.add_argument("--bandwidth", type=float, default=20e6, help="bytes/s per connection")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4, 8], help="--connections of each case")
    parser.add_argument("--no-latency-only", action="store_true", help="skip the slow-link cases")
    parser.add_argument("--baseline", type=Path, help="another expo's src/ folder to measure in the same run")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case: the median is reported")
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)  # SFT ALIGNED LATENCY BANDWIDTH: the Hub process
    args = parser.parse_args()
    if args.serve:
        sft, aligned, latency, bandwidth = args.serve
        serve_pair(Path(sft), Path(aligned), float(latency), float(bandwidth) or None)
        return
    sft, aligned = build_pair(args.size)
    if args.network:
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            network(args, sft, aligned, Path(tmp))
        return
    largest = max(sum(f.stat().st_size for f in weight_files(p)) for p in (sft, aligned))
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        seconds, peak, _, _ = streamed(sft, aligned, args.alpha, Path(tmp), args.max_shard_size)
        print(
            f"streamed Hub-to-Hub merge ({args.size}, --max-shard-size {args.max_shard_size}): {seconds:.1f} s, "
            f"peak scratch {peak / 1e6:.0f} MB (one input: {largest / 1e6:.0f} MB)"
        )
        shutil.rmtree(Path(tmp) / "scratch", ignore_errors=True)
        one, many, same = array(sft, aligned, args.alpha, Path(tmp), args.parts)
        print(
            f"job array of {args.parts} parts at once: {many:.1f} s against one process: {one:.1f} s "
            f"({many / one:.2f}×), outputs byte-identical: {same}"
        )


if __name__ == "__main__":
    main()
