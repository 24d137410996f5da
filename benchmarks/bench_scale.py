"""Bigger than the disk, bigger than one machine: a streamed Hub-to-Hub merge and a job array, on one pair.

    python benchmarks/bench_scale.py [--size 2gb] [--parts 4] [--max-shard-size 500MB]

1. The pair (bench_merge.py's cached one) is published to the test Hub server of tests/hub_server.py on 127.0.0.1,
   then `expo merge --stream --push-to-hub` merges it Hub to Hub: wall time, and the peak size of its scratch
   folder (sampled every 10 ms) against the size of one input.
2. A job array on the local pair: N `expo merge --part I/N` processes started at once (the last one finishes the
   output), against one `expo merge` process, the outputs compared byte for byte.
"""

from __future__ import annotations

import argparse
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
        time.sleep(0.01)


def streamed(sft: Path, aligned: Path, alpha: float, work: Path, shard: str) -> tuple[float, int]:
    hub, server = serve()
    for repo, folder in (("bench/sft", sft), ("bench/aligned", aligned)):
        hub.create(repo, {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()})
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        "HF_TOKEN": WRITE_TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(work / "hf-home"),
    }
    scratch = work / "scratch"
    scratch.mkdir()
    done, peak = threading.Event(), [0]
    sampler = threading.Thread(target=peak_size, args=(scratch, done, peak), daemon=True)
    sampler.start()
    started = time.perf_counter()
    subprocess.run(
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
        ],
        check=True,
        env=env,
    )
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    server.shutdown()
    return seconds, peak[0]


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
    args = parser.parse_args()
    sft, aligned = build_pair(args.size)
    largest = max(sum(f.stat().st_size for f in weight_files(p)) for p in (sft, aligned))
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        seconds, peak = streamed(sft, aligned, args.alpha, Path(tmp), args.max_shard_size)
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
