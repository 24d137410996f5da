"""Every command at the speed of the disk: `expo merge`, `verify`, `inspect` and `push` on the same pair, in one run.

    python benchmarks/bench_commands.py [--size 2gb] [--repeat 3] [--baseline OTHER/src]

Uses the cached pairs of bench_merge.py. The commands run interleaved (merge, verify, inspect, push, merge, ...)
with the page cache warmed the same way before each, so that all see the same disk; the table gives each one's
median wall time, its ratio to `expo merge` measured in the same run, and peak RSS and RssAnon (anonymous memory:
what the command itself holds, not the page cache's mapped inputs). `push` uploads the merged output to the test
Hub server of tests/hub_server.py on 127.0.0.1, a fresh repo each time (Xet off, as in the tests).
`--baseline` runs the same commands from another checkout's src/ as well, interleaved, for before/after figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_merge import CACHE, build_pair, run_tool, warm  # noqa: E402

from hub_server import WRITE_TOKEN, serve  # noqa: E402


def commands(sft: Path, aligned: Path, out: Path, alpha: float) -> dict[str, list[str]]:
    expo = [sys.executable, "-m", "expo_cli"]
    pair = ["--sft", str(sft), "--aligned", str(aligned)]
    return {
        "merge": [*expo, "merge", *pair, "-o", str(out), "--alpha", str(alpha), "--quiet", "--device", "cpu"],
        "verify": [*expo, "verify", str(out), *pair, "--quiet"],
        "inspect": [*expo, "inspect", *pair, "--alpha", str(alpha), "--quiet", "--json"],
        "push": [*expo, "push", str(out), "bench/out-{n}", "--quiet"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2gb")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--baseline", type=Path, help="another expo's src/ folder, measured in the same run")
    parser.add_argument("--thorough", action="store_true", help="also time `expo verify --thorough` (once each)")
    args = parser.parse_args()
    hub, server = serve()
    os.environ.update(
        HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}",
        HF_TOKEN=WRITE_TOKEN,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    sft, aligned = build_pair(args.size)
    versions = {"": None, **({f" [baseline {args.baseline.parent.name}]": args.baseline} if args.baseline else {})}
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        count = 0
        for _ in range(args.repeat):
            for label, src in versions.items():
                out = Path(tmp) / "out"
                shutil.rmtree(out, ignore_errors=True)
                prefix = ["env", f"PYTHONPATH={src}"] if src else []
                steps = list(commands(sft, aligned, out, args.alpha).items())
                if args.thorough and not src and "verify --thorough" not in runs:
                    steps.append(("verify --thorough", [*steps[1][1], "--thorough"]))
                for name, command in steps:
                    count += 1
                    command = [part.replace("{n}", str(count)) for part in command]
                    warm(sft, aligned, *([out] if out.exists() else []))
                    runs.setdefault(name + label, []).append(run_tool([*prefix, *command], name == "merge"))
                    if name == "push":
                        hub.lfs.clear()
                        hub.repos.clear()
    print(
        f"| command ({args.size}, α = {args.alpha:g}) | wall s (median [min–max]) | × merge | peak RSS MiB | "
        "peak RssAnon MiB |\n|---|---|---|---|---|"
    )
    for name, results in runs.items():
        walls = [r["wall"] for r in results]
        label = name[name.index(" [") :] if " [" in name else ""
        merge = statistics.median(r["wall"] for r in runs["merge" + label])
        print(
            f"| expo {name} | {statistics.median(walls):.2f} [{min(walls):.2f}–{max(walls):.2f}] | "
            f"{statistics.median(walls) / merge:.2f} | {max(r['rss_mib'] for r in results):.0f} | "
            f"{max(r['anon_mib'] for r in results):.0f} |"
        )


if __name__ == "__main__":
    main()
