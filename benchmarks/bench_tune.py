"""Where `expo tune`'s time goes (writing θ(α) into the model against generating and scoring), and the two
generation backends compared on the same pair, prompts and settings.

    python benchmarks/bench_tune.py [--prompts 32] [--alphas 0.1,0.3,0.5] [--hidden 768 --layers 12]
    python benchmarks/bench_tune.py --backends transformers,vllm --vllm-python .venv-vllm/bin/python \
        --hidden 512 --layers 8 --max-new-tokens 64

Each run is `expo tune` in a subprocess (`--device cpu --dtype float32` unless told, `--json`, `--fresh`) with a
tiny sequence-classification reward model, 4 candidates (α = 0 and three more), the same prompts, temperature 1
and one batch of all prompts. Pairs: the README's example pair (2 layers, 0.03M parameters; transformers only:
vLLM's CPU attention needs heads of 64) and a Llama built here (default 12 layers of width 768: 85M parameters),
where the weight update has real bytes to move. For each backend: wall time (start-up included), per candidate
the update / generation / scoring seconds and generated tokens per second (the command's own timings), the
update's share of a candidate's time, and the peak anonymous memory (RssAnon summed over the process and its
children, polled: the memory-mapped inputs' page cache is not counted) against one model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

from make_tiny_pair import WORDS, tokenizer  # noqa: E402
from make_tiny_pair import main as make_tiny_pair  # noqa: E402


def build_large_pair(
    root: Path, hidden: int, layers: int, dtype: torch.dtype = torch.float32, intermediate: int | None = None, **more
) -> tuple[Path, Path]:
    """A Llama pair of `layers` layers of width `hidden` (heads of 64), the aligned one 0.002 away (`more`: other
    config settings, e.g. initializer_range)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        vocab_size=len(WORDS),
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        **more,
    )
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(root / "sft")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.002)
    model.save_pretrained(root / "aligned")
    for side in ("sft", "aligned"):
        tokenizer().save_pretrained(root / side)
    return root / "sft", root / "aligned"


def build_reward_model(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(1)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(WORDS),
        num_labels=1,
        pad_token_id=0,
    )
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tok = tokenizer()
    tok.pad_token = "<unk>"
    tok.save_pretrained(folder)
    return folder


def write_prompts(path: Path, count: int) -> Path:
    """`count` three-word prompts from the tiny tokenizer's words, as JSON lines."""
    words = WORDS[3:]
    path.write_text(
        "".join(
            json.dumps({"prompt": " ".join(words[(i + k) % len(words)] for k in range(3))}) + "\n"
            for i in range(count)
        )
    )
    return path


def model_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def tune(
    python: str, backend: str, sft: Path, aligned: Path, rm: Path, prompts: Path, args: argparse.Namespace
) -> tuple[dict, float, int]:
    """Run expo tune; return its report, wall time, and peak anonymous memory (RssAnon of it and its children)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            python,
            "-m",
            "expo_cli",
            "tune",
            "--sft",
            str(sft),
            "--aligned",
            str(aligned),
            "--prompts",
            str(prompts),
            "--reward-model",
            str(rm),
            "--alpha",
            args.alphas,
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--temperature",
            "1",
            "--batch-size",
            str(args.prompts),
            "--dtype",
            args.dtype,
            "--device",
            args.device,
            "--backend",
            backend,
            "--run-dir",
            str(prompts.parent / f"tune-run-{backend}"),
            "--fresh",  # every response generated now: a resumed run would time nothing
            "--json",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_anonymous(process.pid))
        time.sleep(0.05)
    stdout = process.stdout.read()
    if process.returncode:
        raise SystemExit(f"expo tune --backend {backend} failed with exit code {process.returncode}")
    return json.loads(stdout), time.perf_counter() - started, peak


def tree_anonymous(pid: int) -> int:
    """RssAnon of a process and all its descendants (vLLM's engine and workers are child processes)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(status.split("RssAnon:")[1].split()[0]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            pass
    return total


def report(name: str, size: int, result: dict, wall: float, peak: int) -> None:
    print(
        f"\n{name}: one model = {size / 1e6:.1f} MB; expo tune wall time {wall:.1f} s "
        f"({result['prompts']} prompts, {len(result['candidates'])} candidates); peak anonymous memory "
        f"(RssAnon, with children) {peak / 1e6:.0f} MB = {peak / size:.1f}× one model"
    )
    print(
        f"{'α':>6} {'update s':>9} {'generate s':>11} {'tokens/s':>9} {'score s':>8} {'update share':>13} "
        f"{'mean reward':>12}"
    )
    for c in result["candidates"]:
        t = result["timing"][f"selection:{c['alpha']:g}"]
        total = t["update_seconds"] + t["generate_seconds"] + t["score_seconds"]
        print(
            f"{c['alpha']:>6g} {t['update_seconds']:>9.3f} {t['generate_seconds']:>11.2f} "
            f"{t['tokens'] / t['generate_seconds']:>9.0f} {t['score_seconds']:>8.2f} "
            f"{t['update_seconds'] / total:>12.1%} {c['reward']['estimate']:>12.4f}"
        )


def summary(runs: dict[str, tuple[dict, float, int]]) -> None:
    """Per candidate, on average: the backends side by side, as ratios measured in this run."""
    if len(runs) < 2:
        return
    print("\nbackends compared (mean per candidate, this run):")
    base = None
    for backend, (result, wall, peak) in runs.items():
        timings = [result["timing"][f"selection:{c['alpha']:g}"] for c in result["candidates"]]
        per = sum(t["update_seconds"] + t["generate_seconds"] + t["score_seconds"] for t in timings) / len(timings)
        rate = sum(t["tokens"] for t in timings) / sum(t["generate_seconds"] for t in timings)
        update = sum(t["update_seconds"] for t in timings) / len(timings)
        base = base or (per, rate)
        print(
            f"  {backend:<13} {per:7.2f} s per candidate ({base[0] / per:4.2f}× the first's speed), "
            f"{rate:7.0f} tokens/s ({rate / base[1]:4.2f}×), update {update:.3f} s, wall {wall:.1f} s, "
            f"peak {peak / 1e6:.0f} MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--alphas", default="0.1,0.3,0.5")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--backends", default="transformers", help="comma list: transformers, vllm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--vllm-python", default=sys.executable, help="a Python with vLLM and expo installed")
    args = parser.parse_args()
    backends = args.backends.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; backends {', '.join(backends)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prompts = write_prompts(root / "prompts.jsonl", args.prompts)
        rm = build_reward_model(root / "rm")
        pairs = {
            f"Llama {args.layers}×{args.hidden}, {args.dtype}": build_large_pair(
                root / "large", args.hidden, args.layers
            )
        }
        if backends == ["transformers"]:  # vLLM's CPU attention cannot run the example pair's heads of 16
            make_tiny_pair(root / "tiny")
            pairs = {
                "example pair (examples/make_tiny_pair.py)": (root / "tiny" / "sft", root / "tiny" / "aligned")
            } | pairs
        for name, (sft, aligned) in pairs.items():
            runs = {}
            for backend in backends:
                python = args.vllm_python if backend == "vllm" else sys.executable
                runs[backend] = tune(python, backend, sft, aligned, rm, prompts, args)
                report(f"{name}, --backend {backend}", model_bytes(aligned), *runs[backend])
            summary(runs)


if __name__ == "__main__":
    main()
