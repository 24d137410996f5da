"""`expo verify`: recompute a merged checkpoint from its inputs and report every tensor that differs.

Trust nothing but the inputs: each output shard's sha256 is checked against the provenance in config.json,
then every element is compared with the float64 reference of the formula. A correct output is within one
rounding step of the output dtype, plus the error of the float32 (float64) computation on the inputs' scale:
a result that cancels to nearly zero cannot be closer than that. Copied tensors and rows must match exactly.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .alpha import AlphaRule, alpha_for
from .checkpoint import Checkpoint, iter_chunks, load_checkpoint, load_consolidated, torch_dtype
from .constants import CHUNK_ELEMENTS
from .errors import ExpoError, UsageError
from .pairing import TensorPlan, plan_merge

SHOWN = 10  # mismatching tensors listed


class VerifyFailed(ExpoError):
    """The output differs from what its inputs give (exit code 1)."""

    exit_code = 1


@dataclass
class VerifyResult:
    output: Path
    alpha: float
    tensors: int
    elements: int
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    checksum_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.checksum_errors

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "output": str(self.output), "ok": self.ok}


def verify(output: str | Path, sft: str | Path, aligned: str | Path, alpha: float | None = None,
           progress: bool = True, token: str | None = None) -> VerifyResult:  # fmt: skip
    """Check `output` against θ_aligned + α·(θ_aligned − θ_sft); α defaults to the one its provenance records.

    `sft` and `aligned` may be Hub repo ids, as for a merge; the per-tensor rules recorded in the provenance apply.
    """
    started = time.perf_counter()
    out = load_checkpoint(Path(output), "output")
    record = out.config.get("expo") if isinstance(out.config.get("expo"), dict) else {}
    if alpha is None:
        alpha = record.get("alpha")
        if not isinstance(alpha, int | float):
            raise UsageError(f"{output}: its config.json records no expo alpha; pass --alpha")
    result = VerifyResult(output=Path(output).resolve(), alpha=float(alpha), tensors=len(out.tensors), elements=0)
    result.checksum_errors = _check_checksums(Path(output), record.get("shards"))

    from .merging import MergeOptions, resolve_inputs

    opts = MergeOptions(allow_architecture_mismatch=True, token=token)
    sft_ckpt, aligned_ckpt = resolve_inputs(sft, aligned, opts)
    sets = [(out, sft_ckpt, aligned_ckpt)]
    if record.get("mistral_format"):  # the consolidated files hold the same model in Mistral's format
        sets.append(tuple(load_consolidated(c.path, role) for c, role in
                          ((out, "output"), (sft_ckpt, "sft"), (aligned_ckpt, "aligned"))))  # fmt: skip
    rules = [AlphaRule(r["pattern"], r["alpha"], r["rule"]) for r in record.get("rules") or []]

    from huggingface_hub.utils import tqdm

    total = sum(t.nbytes for o, _, _ in sets for t in o.tensors.values())
    result.tensors = sum(len(o.tensors) for o, _, _ in sets)
    with tqdm(total=total, unit="B", unit_scale=True, desc="Verifying", disable=not progress,
              file=sys.stderr) as bar:  # fmt: skip
        for checkpoints in sets:
            _verify_set(*checkpoints, float(alpha), rules, result, bar)
    result.seconds = time.perf_counter() - started
    return result


def _verify_set(out: Checkpoint, sft: Checkpoint, aligned: Checkpoint, alpha: float, rules: list[AlphaRule],
                result: VerifyResult, bar: Any) -> None:  # fmt: skip
    """Compare every tensor of one set of output files with what its inputs give."""
    plans = {t.name: t for t in plan_merge(sft, aligned).tensors}
    if set(plans) != set(out.tensors):
        extra, missing = sorted(set(out.tensors) - set(plans)), sorted(set(plans) - set(out.tensors))
        raise VerifyFailed(
            f"{result.output}: tensor names differ from the aligned model (extra {extra[:3]}, missing {missing[:3]})"
        )
    with out, sft, aligned:
        for name, info in out.tensors.items():
            plan = plans[name]
            if info.shape != plan.shape:
                problem = f"shape {list(info.shape)} vs {list(plan.shape)}"
                result.mismatches.append({"tensor": name, "problem": problem})
                continue
            bad, worst = _compare(out, info, plan, sft, aligned, alpha_for(name, rules, alpha))
            result.elements += info.numel
            if bad:
                result.mismatches.append({"tensor": name, "elements": bad, "max_abs_error": worst})
            bar.update(info.nbytes)


def _check_checksums(folder: Path, recorded: Any) -> list[str]:
    if not isinstance(recorded, dict) or not recorded:
        return ["config.json records no shard checksums (not written by expo >= 0.1, or edited)"]
    errors = []
    on_disk = {p.name for p in folder.glob("*.safetensors")}
    for name in sorted(on_disk - set(recorded)):
        errors.append(f"{name}: not in the recorded shards")
    for name, expected in sorted(recorded.items()):
        path = folder / name
        if not path.is_file():
            errors.append(f"{name}: missing")
            continue
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as fh:
            while block := fh.read(16 << 20):
                digest.update(block)
        if digest.hexdigest() != expected:
            errors.append(f"{name}: sha256 {digest.hexdigest()[:12]}… differs from the recorded {str(expected)[:12]}…")
    return errors


def _compare(out: Checkpoint, info, plan: TensorPlan, sft: Checkpoint, aligned: Checkpoint,
             alpha: float) -> tuple[int, float]:  # noqa: ANN001  # fmt: skip
    """(elements outside the tolerance, largest absolute error) of one output tensor."""
    import torch

    bad, worst = 0, 0.0
    for start, stop in iter_chunks(info.numel, CHUNK_ELEMENTS):
        got = out.flat(info, start, stop)
        shared_stop = min(stop, plan.shared) if plan.sft is not None else start
        if not info.is_float:
            expected = aligned.flat(plan.aligned, start, stop)
            bad += int((got != expected).sum())
            continue
        if shared_stop > start:
            n = shared_stop - start
            a = aligned.flat(plan.aligned, start, shared_stop).double()
            s = sft.flat(plan.sft, start, shared_stop).double()
            ref = a + alpha * (a - s)
            dtype = torch_dtype(info.dtype)
            compute = torch.float64 if dtype == torch.float64 else torch.float32
            tolerance = _ulp(ref, dtype) + 2 * torch.finfo(compute).eps * (a.abs() + abs(alpha) * (a - s).abs())
            error = (got[:n].double() - ref).abs()
            outside = ~(error <= tolerance)  # NaN counts as outside
            bad += int(outside.sum())
            worst = max(worst, float(error.nan_to_num(float("inf")).max()))
        if stop > shared_stop:
            lo = max(start, shared_stop) - start
            copied = aligned.flat(plan.aligned, start + lo, stop).to(got.dtype)
            bad += int((got[lo:] != copied).sum())
    return bad, worst


def _ulp(values, dtype):  # noqa: ANN001, ANN202
    import torch

    info = torch.finfo(dtype)
    return info.eps * torch.exp2(torch.floor(torch.log2(values.abs().clamp_min(info.tiny))))
