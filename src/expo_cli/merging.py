"""`expo_cli.merge`: the library API the CLI is a thin shell over.

Order of work: read and validate both checkpoints' headers, pair them, check the output and the free space;
only then stream every tensor (read, extrapolate, write) into a temporary folder, add config, card and the
aligned model's other files, fsync, and rename into place as the very last step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .checkpoint import Checkpoint, dtype_name, itemsize, iter_chunks, load_checkpoint, torch_dtype
from .constants import CHUNK_ELEMENTS, DEFAULT_MAX_SHARD_SIZE
from .errors import NonFiniteError, UsageError
from .extrapolate import check_alpha, formula
from .metadata import Source, copy_extra_files, extra_files, provenance, write_config, write_model_card
from .output import Staging, check_output, check_space, stale_partials
from .plan import MergePlan, TensorPlan, check_configs, plan_merge
from .writer import ShardStream, parse_size, plan_shards, write_index

DTYPE_CODES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


@dataclass
class MergeResult:
    """What a merge produced; `to_json()` is what `expo merge --json` prints."""

    output: Path
    alpha: float
    formula: str
    device: str
    tensors: int
    extrapolated: int
    bytes_read: int
    bytes_written: int
    shards: list[str]
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def gb_per_s(self) -> float:
        return (self.bytes_read + self.bytes_written) / 1e9 / max(self.seconds, 1e-9)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "output": str(self.output), "gb_per_s": round(self.gb_per_s, 3)}


def merge(
    sft: str | Path,
    aligned: str | Path,
    output: str | Path,
    alpha: float,
    *,
    dtype: str | None = None,
    device: str = "auto",
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    force: bool = False,
    allow_architecture_mismatch: bool = False,
    strict: bool = False,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> MergeResult:
    """Write θ_aligned + α·(θ_aligned − θ_sft) as a new checkpoint folder at `output`.

    Args:
        sft, aligned: local checkpoint folders (safetensors or .bin, single file or sharded).
        alpha: the paper's α; 0 returns the aligned model, −1 the SFT model.
        dtype: "bfloat16", "float16" or "float32" for every floating tensor; default: each aligned dtype.
        device: "cpu", "cuda" or "auto" (CUDA when available).
        max_shard_size: bytes per output shard, an int or a string such as "5GB" (decimal units).
        force: replace a non-empty `output`.
        allow_architecture_mismatch: skip the config.json model_type/architectures check.
        strict: make inf/NaN already present in an input an error instead of a warning.
        progress: show a progress bar on stderr.
        warn: called with each message for the user (notes, warnings); default: print to stderr.

    Raises:
        ExpoError: a subclass naming what is wrong, always before the output exists.
    """
    started = time.perf_counter()
    warn = warn or (lambda message: print(f"Warning: {message}", file=sys.stderr))
    try:
        alpha = check_alpha(alpha)
    except ValueError as err:
        raise UsageError(f"--alpha: {err}") from err
    out_code = _dtype_code(dtype)
    sft, aligned, output = Path(sft), Path(aligned), Path(output)
    shard_size = _shard_size(max_shard_size)

    sft_ckpt = load_checkpoint(sft, "sft")
    aligned_ckpt = load_checkpoint(aligned, "aligned")
    check_configs(sft_ckpt, aligned_ckpt, allow_architecture_mismatch)
    plan = plan_merge(sft_ckpt, aligned_ckpt, out_code)
    for note in plan.notes:
        warn(note)
    check_output(output, {"sft": sft, "aligned": aligned}, force)
    shards = plan_shards(plan.tensors, shard_size)
    copied = sum((aligned / f).stat().st_size for f in extra_files(aligned))
    check_space(output, sum(s.size for s in shards) + copied)
    for leftover in stale_partials(output):
        warn(f"removing {leftover}, left by an earlier run that did not finish")
        import shutil

        shutil.rmtree(leftover, ignore_errors=True)
    torch_device = _device(device)
    sources = Source.from_path(sft), Source.from_path(aligned)
    equation = formula(alpha)

    with Staging(output) as staging, sft_ckpt, aligned_ckpt:
        stream = ShardStream(staging.path, shards)
        try:
            _stream(
                [t for s in shards for t in s.tensors], sft_ckpt, aligned_ckpt, stream, alpha, torch_device,
                progress, strict, warn,
            )  # fmt: skip
            stream.close()
        except BaseException:
            stream.abort()
            raise
        write_index(staging.path, shards)
        record = provenance(
            alpha, equation, *sources, __version__, dtype=dtype, notes=plan.notes, shards=stream.checksums
        )
        write_config(aligned_ckpt.config, _config_dtype(plan), record, staging.path)
        copy_extra_files(aligned, staging.path)
        write_model_card(staging.path, record, *sources, aligned, output.name, plan.notes)
        staging.commit(force)

    return MergeResult(
        output=output.resolve(),
        alpha=alpha,
        formula=equation,
        device=str(torch_device),
        tensors=len(plan.tensors),
        extrapolated=plan.extrapolated,
        bytes_read=sum(t.aligned.nbytes + (t.sft.nbytes if t.sft else 0) for t in plan.tensors),
        bytes_written=sum(s.size for s in shards),
        shards=[s.filename for s in shards],
        seconds=time.perf_counter() - started,
        notes=plan.notes,
    )


def _dtype_code(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    if dtype not in DTYPE_CODES:
        raise UsageError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPE_CODES)}")
    return DTYPE_CODES[dtype]


def _shard_size(value: int | str) -> int:
    try:
        size = parse_size(value)
    except ValueError as err:
        raise UsageError(f"--max-shard-size {value!r}: use a size such as 5GB, 500MB or 2000000000") from err
    if size <= 0:
        raise UsageError(f"--max-shard-size {value!r}: must be positive")
    return size


def _device(name: str):  # noqa: ANN202 - torch.device, imported lazily
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"--device {name!r}: choose cpu, cuda or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu")
    return torch.device(name)


def _config_dtype(plan: MergePlan) -> str | None:
    """The dtype that holds most of the output's floating bytes: what config.json should announce."""
    by_dtype: dict[str, int] = {}
    for t in plan.tensors:
        if t.sft is not None or t.aligned.is_float:
            by_dtype[t.out_dtype] = by_dtype.get(t.out_dtype, 0) + t.nbytes
    return dtype_name(max(by_dtype, key=by_dtype.__getitem__)) if by_dtype else None


def _stream(
    tensors: list[TensorPlan],
    sft: Checkpoint,
    aligned: Checkpoint,
    stream: ShardStream,
    alpha: float,
    device: Any,
    progress: bool,
    strict: bool,
    warn: Callable[[str], None],
) -> None:
    """Read, extrapolate and hand every tensor to the writer, chunk by chunk, in output order."""
    from huggingface_hub.utils import tqdm

    from .engine import ChunkEngine

    engine = ChunkEngine(alpha, device, max((itemsize(t.out_dtype) for t in tensors), default=1), CHUNK_ELEMENTS)
    total = sum(t.nbytes for t in tensors)
    with tqdm(total=total, unit="B", unit_scale=True, desc="Merging", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:  # fmt: skip
        for count, t in enumerate(tensors, 1):
            chunks = list(iter_chunks(t.numel, CHUNK_ELEMENTS))
            probes = []
            for i, (start, stop) in enumerate(chunks):
                if i + 1 < len(chunks):
                    _prefetch(t, sft, aligned, *chunks[i + 1])
                elif count < len(tensors):
                    nxt = tensors[count]
                    _prefetch(nxt, sft, aligned, 0, min(nxt.numel, CHUNK_ELEMENTS))
                shared_stop = min(stop, t.shared) if t.sft is not None else start
                if shared_stop > start:
                    if alpha == 0 and t.out_dtype == t.aligned.dtype:  # bit for bit the aligned tensor
                        stream.write(aligned.raw(t.aligned, start, shared_stop))
                    elif alpha == -1 and t.out_dtype == t.sft.dtype:  # bit for bit the SFT tensor
                        stream.write(sft.raw(t.sft, start, shared_stop))
                    else:
                        probe = engine.extrapolate(
                            sft.flat(t.sft, start, shared_stop), aligned.flat(t.aligned, start, shared_stop),
                            torch_dtype(t.out_dtype), stream,
                        )  # fmt: skip
                        probes.append(probe)
                if stop > shared_stop:  # copied unchanged: non-floating tensors, grown vocabulary rows
                    lo = max(start, shared_stop)
                    if t.out_dtype == t.aligned.dtype:
                        stream.write(aligned.raw(t.aligned, lo, stop))
                    else:
                        engine.convert(aligned.flat(t.aligned, lo, stop), torch_dtype(t.out_dtype), stream)
                bar.update((stop - start) * itemsize(t.out_dtype))
            if probes and not engine.finite(probes):
                _nonfinite(t, sft, aligned, alpha, strict, warn)
            bar.set_postfix_str(f"{count}/{len(tensors)} tensors", refresh=False)


def _prefetch(t: TensorPlan, sft: Checkpoint, aligned: Checkpoint, start: int, stop: int) -> None:
    aligned.prefetch(t.aligned, start, stop)
    if t.sft is not None:
        sft.prefetch(t.sft, start, min(stop, t.shared))


def _nonfinite(t: TensorPlan, sft: Checkpoint, aligned: Checkpoint, alpha: float, strict: bool,
               warn: Callable[[str], None]) -> None:  # fmt: skip
    """Explain an inf/NaN result: inherited from an input (a warning) or made by the arithmetic (an error)."""
    import torch

    assert t.sft is not None
    for role, ckpt, info, stop in (("aligned", aligned, t.aligned, t.shared), ("sft", sft, t.sft, t.shared)):
        for start, end in iter_chunks(stop, CHUNK_ELEMENTS):
            if not bool(torch.isfinite(ckpt.flat(info, start, end)).all()):
                message = f"tensor {t.name!r}: the {role} input already holds inf/NaN, so the output does too"
                if strict:
                    raise NonFiniteError(f"{message} (--strict)")
                warn(message)
                return
    hint = "; try --dtype float32 or a smaller --alpha" if t.out_dtype != "F32" else "; try a smaller --alpha"
    raise NonFiniteError(
        f"tensor {t.name!r}: α={alpha:g} overflows {dtype_name(t.out_dtype)} (inf/NaN in the result){hint}"
    )
