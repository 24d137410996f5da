"""Where `expo tune`'s time goes: writing θ(α) into the loaded model against generating and scoring, per candidate.

    python benchmarks/bench_tune.py [--prompts 32] [--alphas 0.1,0.3,0.5] [--hidden 768 --layers 12]

Two pairs, each tuned by `expo tune` in a subprocess (CPU, `--json`) with a tiny sequence-classification reward
model, 4 candidates (α = 0 and three more) and 32 prompts:
- the README's example pair (examples/make_tiny_pair.py: 2 layers, 0.03M parameters);
- a larger Llama built here (default 12 layers of width 768: 85M parameters, float32), where the weight update
  has real bytes to move.
For each: wall time, the per-candidate update / generation / scoring seconds (from the command's own timings),
the update's share of a candidate's time, and the peak anonymous memory (RssAnon, polled: the memory-mapped
inputs' page cache is not counted) against the size of one model.
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


def build_large_pair(root: Path, hidden: int, layers: int) -> tuple[Path, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        vocab_size=len(WORDS),
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
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


def model_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def tune(
    sft: Path, aligned: Path, rm: Path, prompts: Path, alphas: str, max_new_tokens: int
) -> tuple[dict, float, int]:
    """Run expo tune; return its report, wall time, and peak anonymous memory (RssAnon: not the mapped inputs)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
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
            alphas,
            "--max-new-tokens",
            str(max_new_tokens),
            "--temperature",
            "1",
            "--device",
            "cpu",
            "--run-dir",
            str(prompts.parent / "tune-run"),
            "--fresh",  # every response generated now: a resumed run would time nothing
            "--json",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    peak = 0
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak = max(peak, int(status.split("RssAnon:")[1].split()[0]) * 1024)
        except (OSError, IndexError):
            pass
        time.sleep(0.02)
    stdout = process.stdout.read()
    if process.returncode:
        raise SystemExit(f"expo tune failed with exit code {process.returncode}")
    return json.loads(stdout), time.perf_counter() - started, peak


def report(name: str, size: int, result: dict, wall: float, peak: int) -> None:
    print(
        f"\n{name}: one model = {size / 1e6:.1f} MB; expo tune wall time {wall:.1f} s "
        f"({result['prompts']} prompts, {len(result['candidates'])} candidates); peak anonymous memory "
        f"(RssAnon) {peak / 1e6:.0f} MB = {peak / size:.1f}× one model"
    )
    print(f"{'α':>6} {'update s':>9} {'generate s':>11} {'score s':>8} {'update share':>13} {'mean reward':>12}")
    for c in result["candidates"]:
        t = result["timing"][f"selection:{c['alpha']:g}"]
        total = t["update_seconds"] + t["generate_seconds"] + t["score_seconds"]
        print(
            f"{c['alpha']:>6g} {t['update_seconds']:>9.3f} {t['generate_seconds']:>11.2f} "
            f"{t['score_seconds']:>8.2f} {t['update_seconds'] / total:>12.1%} "
            f"{c['reward']['estimate']:>12.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--alphas", default="0.1,0.3,0.5")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prompts = root / "prompts.jsonl"
        words = WORDS[3:]
        prompts.write_text(
            "".join(
                json.dumps({"prompt": " ".join(words[(i + k) % len(words)] for k in range(3))}) + "\n"
                for i in range(args.prompts)
            )
        )
        rm = build_reward_model(root / "rm")
        make_tiny_pair(root / "tiny")
        pairs = {
            "example pair (examples/make_tiny_pair.py)": (root / "tiny" / "sft", root / "tiny" / "aligned"),
            f"Llama {args.layers}×{args.hidden}, float32": build_large_pair(root / "large", args.hidden, args.layers),
        }
        for name, (sft, aligned) in pairs.items():
            result, wall, peak = tune(sft, aligned, rm, prompts, args.alphas, args.max_new_tokens)
            report(name, model_bytes(aligned), result, wall, peak)


if __name__ == "__main__":
    main()
