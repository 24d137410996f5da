"""What the tests share: tiny real checkpoints built with transformers, the float64 reference of the ExPO
formula, assertions on merged outputs, and ways to run and interrupt `expo`."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from expo_cli.inputs.checkpoint import load_checkpoint

VOCAB = 96


def llama_config(**overrides) -> LlamaConfig:
    settings = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    settings |= {"num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 64}
    return LlamaConfig(**{**settings, "tie_word_embeddings": False, **overrides})


def gpt2_config(**overrides) -> GPT2Config:
    settings = {"n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": VOCAB, "n_positions": 64}
    return GPT2Config(**{**settings, "tie_word_embeddings": True, **overrides})


def build_model(config, seed: int):
    torch.manual_seed(seed)
    cls = LlamaForCausalLM if config.model_type == "llama" else GPT2LMHeadModel
    return cls(config).eval()


def perturb(model, seed: int, scale: float = 0.001):
    """What alignment does: a small move of every weight."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator).to(p.dtype) * scale)
    return model


def save(model, path: Path, dtype: torch.dtype, max_shard_size: str | None = None, fmt: str = "safetensors") -> Path:
    model = model.to(dtype)
    if fmt == "safetensors":
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(path, **kwargs)
    else:  # transformers 5 no longer writes .bin: write what older versions wrote
        path.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(path)
        state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        torch.save(state, path / "pytorch_model.bin")
    return path


def add_tokenizer_files(path: Path) -> None:
    """The loader files an aligned model ships beside its weights, which the output must carry byte for byte: a real
    tokenizer (tokenizer.json, its config, the chat template; BOS added by its post-processor, as Llama's is), an
    older special_tokens_map.json, and custom code that no auto_map names."""
    word_tokenizer(adds_bos=True).save_pretrained(path)
    (path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    (path / "modeling_custom.py").write_text("# custom code travels with the model\n")


def make_pair(
    root: Path,
    arch: str = "llama",
    dtype=torch.bfloat16,
    sft_dtype=None,
    sft_shards=None,
    aligned_shards="30KB",
    sft_tied=None,
    aligned_tied=None,
    aligned_vocab=None,
    sft_fmt="safetensors",
    aligned_fmt="safetensors",
) -> tuple[Path, Path]:
    """An SFT checkpoint and an aligned one a small step away, saved by transformers."""
    make_config = llama_config if arch == "llama" else gpt2_config
    sft_kwargs = {} if sft_tied is None else {"tie_word_embeddings": sft_tied}
    sft_model = build_model(make_config(**sft_kwargs), seed=0)
    sft = save(sft_model, root / "sft", sft_dtype or dtype, sft_shards, sft_fmt)

    aligned_kwargs = {} if aligned_tied is None else {"tie_word_embeddings": aligned_tied}
    aligned_model = build_model(make_config(**aligned_kwargs), seed=0)
    aligned_model.load_state_dict(sft_model.float().state_dict(), strict=False)
    if aligned_model.config.tie_word_embeddings is False and sft_model.config.tie_word_embeddings:
        with torch.no_grad():  # untied from the SFT's shared matrix, as training would start
            aligned_model.lm_head.weight.copy_(aligned_model.get_input_embeddings().weight)
    perturb(aligned_model, seed=1)
    if aligned_vocab:
        aligned_model.resize_token_embeddings(aligned_vocab)
    aligned = save(aligned_model, root / "aligned", dtype, aligned_shards, aligned_fmt)
    add_tokenizer_files(aligned)
    return sft, aligned


def read_all(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, by name."""
    ckpt = load_checkpoint(path, "aligned")
    tensors = {}
    if ckpt.format == "bin":
        for file in ckpt.weight_files:
            tensors.update(torch.load(file, weights_only=True))
        return tensors
    for file in ckpt.weight_files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors


def reference(sft: torch.Tensor, aligned: torch.Tensor, alpha: float) -> torch.Tensor:
    """θ_aligned + α·(θ_aligned − θ_sft) in float64, on the rows both share."""
    a = aligned[: sft.shape[0]].double() if sft.dim() else aligned.double()
    return a + alpha * (a - sft.double())


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` at each value's magnitude (one rounding step)."""
    info = torch.finfo(dtype)
    return info.eps * torch.exp2(torch.floor(torch.log2(values.double().abs().clamp_min(info.tiny))))


def assert_correct(out: torch.Tensor, sft: torch.Tensor, aligned: torch.Tensor, alpha: float, name: str) -> None:
    """Each element within the error a correct merge can make, derived (not padded) from how it computes.

    float32/float64 outputs (θ_aligned + α·Δ in the compute dtype): half a unit in the last place for the final
    rounding, α held in the compute dtype (|fl(α) − α|·|Δ|), the difference and the product rounded once each
    (2u·|α|·|Δ|), and for float64 the float64 reference's own three roundings. bfloat16/float16 outputs: one
    rounding step of the output dtype plus the float32 computation's error, far below that step.
    """
    ref = reference(sft, aligned, alpha)
    rows = ref.shape[0] if ref.dim() else None
    shared = (out[:rows] if rows is not None else out).double()
    diff = (shared - ref).abs()
    a = aligned[: sft.shape[0]].double() if sft.dim() else aligned.double()
    delta = (a - sft.double()).abs()
    if out.dtype in (torch.float32, torch.float64):
        u = torch.finfo(out.dtype).eps / 2
        held = torch.tensor(alpha, dtype=out.dtype).item()
        step = 0.5 * ulp(shared, out.dtype) + abs(held - alpha) * delta + 2.0001 * u * abs(alpha) * delta
        if out.dtype == torch.float64:
            step = step + 1.0001 * u * (ref.abs() + 2 * abs(alpha) * delta)
    else:
        step = torch.maximum(ulp(ref, out.dtype), ulp(shared, out.dtype))
        step = step + 2 * torch.finfo(torch.float32).eps * (a.abs() + abs(alpha) * delta)
    bad = diff > step
    assert not bad.any(), f"{name}: {int(bad.sum())} elements off by more than derived bound (max {diff.max()})"


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file's bytes under a folder, to prove inputs were not modified."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def word_tokenizer(adds_bos: bool = False):
    """A word-level tokenizer over the tiny models' whole vocabulary (`w4` ... `w95`), with a chat template;
    `adds_bos`: its post-processor adds BOS to every encoding, as Llama's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "<pad>", *(f"w{i}" for i in range(4, VOCAB))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ 'w4 ' if m['role'] == 'user' else 'w5 ' }}{{ m['content'] }} "
        "{% endfor %}{% if add_generation_prompt %}w5 {% endif %}"
    )
    return tok


def save_reward_model(folder: Path, tokenizer) -> Path:
    """A tiny Llama reward model (a sequence classifier with one label: its logit is the reward) and its tokenizer,
    saved as a Hub reward model is."""
    from transformers import LlamaForSequenceClassification

    config = llama_config(num_hidden_layers=1, num_labels=1, pad_token_id=3)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def eos_terminated_reward_model(folder, **config):
    """A reward model whose chat template ends every turn with EOS and which has no pad token: transformers would
    take EOS as pad and pool one token early."""
    torch.manual_seed(4)
    tokenizer = word_tokenizer()
    tokenizer.pad_token = None
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ 'w4 ' if m['role'] == 'user' else 'w5 ' }}{{ m['content'] }}"
        " </s> {% endfor %}"
    )
    save_reward_model(folder, tokenizer)
    settings = json.loads((folder / "config.json").read_text())
    settings.pop("pad_token_id", None)
    (folder / "config.json").write_text(json.dumps({**settings, **config}))
    return folder


def steered_pair(root: Path, dtype=torch.float32) -> tuple[Path, Path]:
    """A pair whose alignment makes token w7 likelier, more so the further it is extrapolated: every input embedding
    moves along one direction v and the output row of w7 along v too, so reward = share of w7 grows with α."""
    config = llama_config(bos_token_id=1, eos_token_id=2, pad_token_id=3)
    sft_model = build_model(config, seed=0)
    sft = save(sft_model, root / "sft", dtype)
    aligned_model = perturb(build_model(config, seed=0), seed=1)
    generator = torch.Generator().manual_seed(2)
    v = torch.randn(config.hidden_size, generator=generator)
    v = 0.15 * v / v.norm()
    with torch.no_grad():
        aligned_model.model.embed_tokens.weight.add_(v)
        aligned_model.lm_head.weight[7].add_(0.25 * v / v.norm())
    aligned = save(aligned_model, root / "aligned", dtype)
    for folder in (sft, aligned):
        word_tokenizer().save_pretrained(folder)
    return sft, aligned


def assert_merged(out: Path, sft: Path, aligned: Path, alpha: float, dtype: torch.dtype | None = None) -> dict:
    """Same names as aligned, each tensor within one rounding step of the float64 reference."""
    merged, s, a = read_all(out), read_all(sft), read_all(aligned)
    assert sorted(merged) == sorted(a)
    for name, tensor in merged.items():
        assert tensor.shape == a[name].shape, name
        assert tensor.dtype == (dtype or a[name].dtype), name
        source = s.get(name)
        if source is None:  # tied in the SFT model: its lm_head is its input embedding
            source = next(v for k, v in s.items() if k.endswith(("embed_tokens.weight", "wte.weight")))
        assert_correct(tensor, source, a[name], alpha, name)
    return merged


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def run_failing(expo, tmp_path, sft, aligned, *extra, code):
    """Run a merge that must fail: check the code, one Error line, no output and no leftovers, inputs intact."""
    out = tmp_path / "out"
    before = snapshot(sft), snapshot(aligned), snapshot(out) if out.exists() else None
    run = expo("merge", "--sft", sft, "--aligned", aligned, "--output", out, "--alpha", "0.5", *extra)
    assert run.code == code, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout == ""
    assert not list(tmp_path.glob(".expo-partial-*"))
    assert (snapshot(sft), snapshot(aligned), snapshot(out) if out.exists() else None) == before
    return errors[0]


def start(sft: Path, aligned: Path, out: Path, *extra: str) -> subprocess.Popen:
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
        "0.5",
        "--max-shard-size",
        "40MB",
        "--quiet",
        *extra,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_partial_shard(out: Path, proc: subprocess.Popen) -> Path:
    """Block until the run has started writing shards into its temporary folder."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for partial in out.parent.glob(f".expo-partial-{out.name}-*"):
            if any(partial.glob("*.safetensors")):
                return partial
        time.sleep(0.001)
    raise AssertionError(f"no partial shard seen (exit {proc.poll()}): {proc.communicate()[1]}")


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: a skipped guarantee is a failure)")
    pytest.skip(reason)


def certificate(stem: Path) -> tuple[Path, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1 (`stem`.pem), and a server context that presents it."""
    cert, key = stem.with_suffix(".pem"), stem.with_name(f"{stem.name}-key.pem")
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True,
    )
    if made.returncode != 0:
        skip_or_fail(f"cannot make a certificate with openssl: {made.stderr.decode().strip()}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


# expo tune's run-folder tests (test_tune_runs, test_tune_spread): 24 prompts and a grader that rewards "w7".
TUNE_PROMPTS = [f"w{8 + i % 40} w{20 + i % 13} w{50 + i % 7}" for i in range(24)]
# While the marker file "kill-when" (or "interrupt-when") exists, sends its own process SIGKILL (or SIGINT, as
# Ctrl-C does) when asked to score once the file the marker names has two lines (a candidate's second batch is
# generated), and removes the marker: a crash, or a Ctrl-C, in the middle of a candidate.
KILLING_GRADER = """import os, signal
from pathlib import Path


def w7_share(prompt, response):
    for name, sent in (("kill-when", signal.SIGKILL), ("interrupt-when", signal.SIGINT)):
        marker = Path(__file__).with_name(name)
        if marker.exists():
            watched = Path(marker.read_text())
            if watched.exists() and len(watched.read_text().splitlines()) >= 2:
                marker.unlink()
                os.kill(os.getpid(), sent)
    with Path(__file__).with_name("scored.log").open("a") as log:  # every call, for tests to count
        log.write(repr((prompt, response)) + "\\n")
    words = response.split()
    return words.count("w7") / max(len(words), 1)


def length(prompt, response):
    return float(len(response.split()))
"""


def moving_pair(root: Path) -> tuple[Path, Path]:
    """A float32 pair whose answers move with α (a random model of initializer range 0.02 answers one token
    everywhere): lm-eval tasks' scores and a judge's verdicts then differ between candidates."""
    config = llama_config(initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    sft_model = build_model(config, seed=0)
    sft = save(sft_model, root / "sft", torch.float32)
    aligned = save(perturb(build_model(config, seed=0), seed=1, scale=0.03), root / "aligned", torch.float32)
    for folder in (sft, aligned):
        word_tokenizer().save_pretrained(folder)
    return sft, aligned


def tiny_tasks(folder: Path, documents: int = 40) -> dict[str, Path]:
    """Two lm-eval tasks whose data ship with them (a local JSON file: no download): a multiple-choice task scored
    by log-likelihood (acc) and a generative one (exact_match of a greedy one-word answer)."""
    import random

    rng = random.Random(7)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for _ in range(documents):
        words = rng.sample(range(8, VOCAB), 7)
        rows.append({"question": " ".join(f"w{w}" for w in words[:3]), "choices": [f"w{w}" for w in words[3:]],
                     "answer": rng.randrange(4), "target": f"w{rng.choice(words[3:])}"})  # fmt: skip
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    common += 'doc_to_text: "{{question}}"\n'
    mc = folder / "tiny_mc.yaml"
    mc.write_text(
        f"task: tiny_mc\n{common}output_type: multiple_choice\ndoc_to_choice: choices\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n"
    )
    gen = folder / "tiny_gen.yaml"
    gen.write_text(
        f"task: tiny_gen\n{common}output_type: generate_until\ndoc_to_target: target\n"
        "generation_kwargs:\n  until: ['</s>']\n  max_gen_toks: 1\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return {"mc": mc, "gen": gen}
