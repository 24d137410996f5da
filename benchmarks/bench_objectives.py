"""What tune's other objectives cost: seconds per candidate for an lm-eval task in memory against the way users
score merges today (write a checkpoint per candidate with `expo merge`, then run `lm_eval` on it), and a pairwise
judge's calls per candidate with and without its verdict cache.

    python benchmarks/bench_objectives.py [--documents 200] [--hidden 768 --layers 12]

Tasks: a multiple-choice task (log-likelihood, acc) and a generative one (greedy, 4 tokens, exact_match) over
`--documents` documents each, from a local JSON file (no download). Pairs: the README's example pair (2 layers) and
a Llama built here (default 12 layers of width 768: 85M parameters). In memory: `expo tune --task` on 4 candidates
(α = 0 and three more; `--holdout 0`), per candidate the weight update plus lm-eval's answering (the command's own
timings), and its wall time divided by the candidates (start-up included). Per checkpoint: for each α, `expo merge`
then `lm_eval --model hf` in a subprocess, as a user's script runs them, timed whole. The judge: `expo tune --judge`
against a local OpenAI-compatible stub (tests/judge_server.py), counting the requests it receives on a first run,
on the same command again (a resumed run), on --rescore after the scores were deleted, and with one α added.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from bench_tune import build_large_pair, write_prompts  # noqa: E402
from make_tiny_pair import WORDS  # noqa: E402
from make_tiny_pair import main as make_tiny_pair  # noqa: E402

from judge_server import Judge, serve  # noqa: E402

ALPHAS = (0.1, 0.3, 0.5)


def write_tasks(folder: Path, documents: int) -> list[Path]:
    """A multiple-choice and a generative task over the tiny tokenizer's words."""
    import random

    rng = random.Random(0)
    words = WORDS[3:]
    rows = []
    for _ in range(documents):
        picked = rng.sample(words, 7)
        rows.append({"question": " ".join(picked[:3]), "choices": picked[3:], "answer": rng.randrange(4),
                     "target": rng.choice(picked[3:])})  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    common += 'doc_to_text: "{{question}}"\n'
    (folder / "bench_mc.yaml").write_text(
        f"task: bench_mc\n{common}output_type: multiple_choice\ndoc_to_choice: choices\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n"
    )
    (folder / "bench_gen.yaml").write_text(
        f"task: bench_gen\n{common}output_type: generate_until\ndoc_to_target: target\n"
        "generation_kwargs:\n  until: ['</s>']\n  max_gen_toks: 4\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return [folder / "bench_mc.yaml", folder / "bench_gen.yaml"]


def run(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def in_memory(sft: Path, aligned: Path, tasks: list[Path], work: Path) -> dict[str, float]:
    wall, out = run([sys.executable, "-m", "expo_cli", "tune", "--sft", str(sft), "--aligned", str(aligned),
                     "--task", ",".join(map(str, tasks)), "--alpha", ",".join(map(str, ALPHAS)), "--holdout", "0",
                     "--device", "cpu", "--dtype", "float32", "--run-dir", str(work / "run"), "--fresh", "--json",
                     "--quiet"])  # fmt: skip
    timing = json.loads(out)["timing"]
    per = [t["update_seconds"] + t["generate_seconds"] for t in timing.values()]
    return {"per_candidate": sum(per) / len(per), "wall_per_candidate": wall / len(per)}


def per_checkpoint(sft: Path, aligned: Path, tasks: list[Path], work: Path) -> dict[str, float]:
    seconds = []
    for alpha in (0.0, *ALPHAS):
        out = work / f"alpha-{alpha}"
        merge, _ = run([sys.executable, "-m", "expo_cli", "merge", "--sft", str(sft), "--aligned", str(aligned),
                        "--alpha", str(alpha), "--output", str(out), "--dtype", "float32", "--quiet"])  # fmt: skip
        evaluate, _ = run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                           f"pretrained={out},dtype=float32", "--tasks", ",".join(map(str, tasks)), "--device", "cpu",
                           "--batch_size", "8", "--log_samples", "--output_path", str(work / "lm-eval")])  # fmt: skip
        seconds.append((merge, evaluate))
        shutil.rmtree(out)
    return {
        "per_candidate": sum(m + e for m, e in seconds) / len(seconds),
        "merge": sum(m for m, _ in seconds) / len(seconds),
        "lm_eval": sum(e for _, e in seconds) / len(seconds),
    }


def judge_calls(sft: Path, aligned: Path, work: Path, prompts: int) -> dict[str, int]:
    state = Judge()
    server = serve(state)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    prompt_file = write_prompts(work / "prompts.jsonl", prompts)

    def tune(alphas: str, *extra: str) -> int:
        before = len(state.requests)
        run([sys.executable, "-m", "expo_cli", "tune", "--sft", str(sft), "--aligned", str(aligned), "--prompts",
             str(prompt_file), "--judge", "stub", "--judge-url", url, "--alpha", alphas, "--holdout", "0",
             "--max-new-tokens", "8", "--temperature", "1", "--run-dir", str(work / "judge-run"), "--quiet",
             *extra])  # fmt: skip
        return len(state.requests) - before

    try:
        first = tune("1,2,4")
        again = tune("1,2,4")
        shutil.rmtree(work / "judge-run" / "rewards")
        rescored = tune("1,2,4", "--rescore")
        added = tune("1,2,4,8")
    finally:
        server.shutdown()
    return {"first_run": first, "per_candidate": first // 3, "same_command_again": again,
            "rescore_after_scores_lost": rescored, "one_alpha_added": added}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="expo-bench-objectives-") as tmp:
        root = Path(tmp)
        tasks = write_tasks(root / "tasks", args.documents)
        make_tiny_pair(root / "tiny")
        pairs = {
            "tiny (2 layers)": (root / "tiny" / "sft", root / "tiny" / "aligned"),
            f"{args.layers}x{args.hidden}": build_large_pair(root / "large", args.hidden, args.layers),
        }
        print(f"lm-eval tasks: {2 * args.documents} documents (multiple choice + generative), 4 candidates")
        for name, (sft, aligned) in pairs.items():
            work = root / "work" / name.split()[0]
            work.mkdir(parents=True)
            mine, theirs = in_memory(sft, aligned, tasks, work), per_checkpoint(sft, aligned, tasks, work)
            print(
                f"  {name}: in memory {mine['per_candidate']:.2f} s/candidate "
                f"({mine['wall_per_candidate']:.2f} s with start-up); checkpoint + lm_eval "
                f"{theirs['per_candidate']:.2f} s/candidate (merge {theirs['merge']:.2f}, lm_eval "
                f"{theirs['lm_eval']:.2f}): {theirs['per_candidate'] / mine['wall_per_candidate']:.1f}x"
            )
        calls = judge_calls(*pairs["tiny (2 layers)"], root / "work", args.prompts)
        print(f"judge calls ({args.prompts} prompts, α = 1,2,4): {json.dumps(calls)}")


if __name__ == "__main__":
    main()
