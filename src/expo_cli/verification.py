"""`expo verify`: recompute a merged checkpoint from its inputs and report every tensor that differs.

Trust nothing but the inputs: each output shard's sha256 is checked against the provenance in config.json (on a
thread of its own, beside the element check), and every element is checked. First each block is recomputed with
the merge's own arithmetic and compared bit for bit, which costs what a merge costs; the elements whose bits
differ (an output made elsewhere, or damaged) are then compared with the float64 reference of the formula under a
tolerance derived, element by element, from how extrapolate.py computes (see `tolerance`): half a unit in the
last place of the output for its one final rounding, plus the few roundings of the float32 (float64) arithmetic
on the scale of α·Δ. Nothing is padded: a float32 output two units off, or one computed by another formula, is
found. `thorough=True` (`--thorough`) sends every element through the float64 check, trusting nothing of
extrapolate.py. Copied tensors and rows, and integer tensors, must match bit for bit; NaN passes only where the
reference is NaN too.
"""

from __future__ import annotations

import hashlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .alpha import AlphaRule, alpha_for
from .constants import CONFIG_NAME
from .core.extrapolate import Extrapolators
from .core.pairing import pair_tensors
from .core.sources import TensorSource, compute_dtype
from .core.streaming import Block, walk
from .errors import ExpoError, InputError, UsageError
from .inputs.adapters import is_adapter
from .inputs.checkpoint import Checkpoint, load_checkpoint, load_consolidated
from .inputs.headers import read_config
from .inputs.hub import input_name
from .inputs.resolve import resolve_inputs

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
    hints: list[str] = field(default_factory=list)  # from the output's provenance, when tensors differ

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.checksum_errors

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "output": str(self.output), "ok": self.ok}


def verify(
    output: str | Path,
    sft: str | Path | None,
    aligned: str | Path,
    alpha: float | None = None,
    progress: bool = True,
    token: str | None = None,
    thorough: bool = False,
    base: str | None = None,
    adapter_stack: str | None = None,
) -> VerifyResult:
    """Check `output` against θ_aligned + α·(θ_aligned − θ_sft); α defaults to the one its provenance records.

    `sft` and `aligned` may be Hub repo ids, as for a merge; the per-tensor rules recorded in the provenance apply.
    Each block is first recomputed with the merge's own arithmetic and compared bit for bit (as fast as a merge);
    only elements whose bits differ are checked against the float64 reference and its derived tolerance.
    `thorough` checks every element against float64 (about ten times slower), trusting nothing of extrapolate.py.
    """
    started = time.perf_counter()
    folder = Path(output)

    if is_adapter(folder):
        raise UsageError(
            f"{output} is a PEFT adapter (--as-adapter): expo verify checks merged checkpoints; "
            "load it with PeftModel, or verify the merged output (the command without --as-adapter)"
        )
    if folder.is_dir() and not (folder / CONFIG_NAME).is_file() and (outputs := _sweep_outputs(folder)):
        raise UsageError(
            f"{output}: a sweep's folder, not a checkpoint; verify one of its outputs, e.g. expo verify {outputs[0]}"
        )
    if not folder.is_dir():
        raise InputError(f"{output}: no such folder; pass the folder expo merge wrote (its --output)")
    config = read_config(folder, "output")
    record = config.get("expo") if isinstance(config.get("expo"), dict) else {}
    recorded_alpha = record.get("alpha") if isinstance(record.get("alpha"), int | float) else None
    if record.get("delta_rank") is not None or len((record.get("trajectory") or {}).get("checkpoints") or []) > 2:
        raise UsageError(
            f"{output}: made with --delta-rank or a --trajectory of more than two checkpoints, which expo verify "
            "does not recompute; check it with `expo merge` of the same command and compare the shards' sha256"
        )
    if alpha is None:
        alpha = recorded_alpha
        if alpha is None:
            raise UsageError(f"{output}: its config.json records no expo alpha; pass --alpha")
    recorded = record.get("shards")
    missing = [name for name in recorded or {} if not (folder / name).is_file()]
    if missing:
        raise VerifyFailed(f"{output}: shard {', '.join(missing)} missing; the output is incomplete: merge it again")
    out = load_checkpoint(folder, "output")
    result = VerifyResult(output=folder.resolve(), alpha=float(alpha), tensors=len(out.tensors), elements=0)
    # The shards' sha256 on a thread of its own, beside the element check (hashlib releases the GIL).
    hashing = ThreadPoolExecutor(1, thread_name_prefix="expo-verify-hash").submit(_check_checksums, folder, recorded)

    sft_ckpt, aligned_ckpt = resolve_inputs(
        sft, aligned, token=token, allow_architecture_mismatch=True, base=base, adapter_stack=adapter_stack
    )
    sets = [(out, sft_ckpt, aligned_ckpt)]
    if record.get("mistral_format"):  # the consolidated files hold the same model in Mistral's format
        sets.append(
            tuple(
                load_consolidated(c.path, role)
                for c, role in ((out, "output"), (sft_ckpt, "sft"), (aligned_ckpt, "aligned"))
            )
        )
    rules = [AlphaRule(r["pattern"], r["alpha"], r["rule"]) for r in record.get("rules") or []]

    from huggingface_hub.utils import tqdm  # the Hub client loads when the Hub is used

    total = sum(t.nbytes for o, _, _ in sets for t in o.tensors.values())
    result.tensors = sum(len(o.tensors) for o, _, _ in sets)
    with tqdm(total=total, unit="B", unit_scale=True, desc="Verifying", disable=not progress, file=sys.stderr) as bar:
        for checkpoints in sets:
            _verify_set(*checkpoints, float(alpha), rules, result, bar, _Recompute(thorough))
    result.checksum_errors = hashing.result()
    result.seconds = time.perf_counter() - started
    if result.mismatches:
        result.hints = _hints(record, float(alpha), recorded_alpha, sft_ckpt, aligned_ckpt)
    return result


def _sweep_outputs(folder: Path) -> list[str]:
    """The merged checkpoints a sweep wrote in `folder` (alpha-<α>/), as paths to type."""
    return sorted(str(sub) for sub in folder.glob("alpha-*") if (sub / CONFIG_NAME).is_file())


def _hints(
    record: dict[str, Any], alpha: float, recorded_alpha: float | None, sft: Checkpoint, aligned: Checkpoint
) -> list[str]:
    """What the output's provenance says about a failed check: another α, or inputs swapped or not its own."""
    hints = []
    if recorded_alpha is not None and recorded_alpha != alpha:
        hints.append(f"its config.json records α={recorded_alpha:g}: leave out --alpha to check that one")
    names = {role: _recorded_name(record.get(role)) for role in ("sft", "aligned")}
    given = {"sft": input_name(sft.path), "aligned": input_name(aligned.path)}
    if names["sft"] and names["aligned"] and names["sft"] != names["aligned"]:
        if (given["sft"], given["aligned"]) == (names["aligned"], names["sft"]):
            hints.append(
                f"--sft and --aligned look swapped: it was made with --sft {names['sft']} --aligned {names['aligned']}"
            )
        elif (given["sft"], given["aligned"]) != (names["sft"], names["aligned"]):
            hints.append(f"it records its inputs as sft {names['sft']!r} and aligned {names['aligned']!r}")
    return hints


def _recorded_name(source: Any) -> str | None:
    """An input's name in the provenance (untrusted JSON: anything but a string is no name)."""
    name = source.get("name") if isinstance(source, dict) else None
    return name if isinstance(name, str) else None


def _verify_set(
    out: Checkpoint,
    sft: Checkpoint,
    aligned: Checkpoint,
    alpha: float,
    rules: list[AlphaRule],
    result: VerifyResult,
    bar: Any,
    recompute: _Recompute,
) -> None:
    """Compare every tensor of one set of output files with what its inputs give."""
    plans = {t.name: t for t in pair_tensors(sft, aligned).tensors}
    if set(plans) != set(out.tensors):
        extra, missing = sorted(set(out.tensors) - set(plans)), sorted(set(plans) - set(out.tensors))
        raise VerifyFailed(
            f"{result.output}: tensor names differ from the aligned model (extra {extra[:3]}, missing {missing[:3]})"
        )
    tensors = []
    for name, info in out.tensors.items():
        if info.shape != plans[name].shape:
            problem = f"shape {list(info.shape)} vs {list(plans[name].shape)}"
            result.mismatches.append({"tensor": name, "problem": problem})
        else:
            tensors.append(plans[name])
    bad, worst = 0, 0.0
    with out, sft, aligned:
        for block in walk(tensors, sft, aligned):
            t = block.tensor
            found, error = _compare(
                out.flat(out.tensors[t.name], block.start, block.stop),
                block,
                sft,
                aligned,
                alpha_for(t.name, rules, alpha),
                recompute,
            )
            bad, worst = bad + found, max(worst, error)
            if block.last:
                result.elements += t.numel
                if bad:
                    result.mismatches.append({"tensor": t.name, "elements": bad, "max_abs_error": worst})
                bad, worst = 0, 0.0
                bar.update(t.nbytes)


class _Recompute:
    """The merge's own arithmetic (extrapolate.py), reusing one scratch buffer: the fast first check."""

    INTEGER_VIEWS = {2: "int16", 4: "int32", 8: "int64"}

    def __init__(self, thorough: bool) -> None:
        self.thorough = thorough
        self._extrapolators = Extrapolators()
        self._scratch: Any = None

    def differing(self, got, sft, aligned, alpha: float):
        """The elements of `got` whose bits differ from a merge's result: None when none do, else an index
        (all of them, `slice(None)`, when thorough)."""
        import torch  # torch loads on first use, not with the package

        if self.thorough:
            return slice(None)
        nbytes = got.numel() * got.element_size()
        if self._scratch is None or self._scratch.numel() < nbytes:
            self._scratch = torch.empty(nbytes, dtype=torch.uint8)
        expected = self._scratch[:nbytes].view(got.dtype)
        self._extrapolators[alpha](sft, aligned, expected)
        bits = getattr(torch, self.INTEGER_VIEWS[got.element_size()])
        if torch.equal(got.view(bits), expected.view(bits)):
            return None
        return (got.view(bits) != expected.view(bits)).nonzero().squeeze(1)


def _check_checksums(folder: Path, recorded: Any) -> list[str]:
    if not isinstance(recorded, dict) or not recorded:
        return ["config.json records no shard checksums (not written by expo >= 0.1, or edited)"]
    errors = []
    on_disk = {p.name for p in folder.glob("*.safetensors")}
    for name in sorted(on_disk - set(recorded)):
        errors.append(f"{name}: not in the recorded shards")
    for name, expected in sorted(recorded.items()):
        path = folder / name
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as fh:
            while block := fh.read(16 << 20):
                digest.update(block)
        if digest.hexdigest() != expected:
            errors.append(f"{name}: sha256 {digest.hexdigest()[:12]}… differs from the recorded {str(expected)[:12]}…")
    return errors


def _compare(
    got, block: Block, sft: TensorSource, aligned: TensorSource, alpha: float, recompute: _Recompute
) -> tuple[int, float]:
    """(elements outside the tolerance, largest absolute error) of one block of an output tensor."""
    t, start, stop, shared_stop = block.tensor, block.start, block.stop, block.shared_stop
    bad, worst = 0, 0.0
    if shared_stop > start:
        value = got[: shared_stop - start]
        s_raw, a_raw = sft.flat(t.sft, start, shared_stop), aligned.flat(t.aligned, start, shared_stop)
        found = recompute.differing(value, s_raw, a_raw, alpha)
        if found is not None:  # only these go through float64
            a, s, value = a_raw[found].double(), s_raw[found].double(), value[found].double()
            ref = a + alpha * (a - s)
            error = (value - ref).abs()
            bound = tolerance(value, ref, (a - s).abs(), alpha, got.dtype, (a_raw.dtype, s_raw.dtype))
            same = (value == ref) | (value.isnan() & ref.isnan())  # inf where the reference is inf; NaN inherited
            bad += int((~((error <= bound) | same)).sum())
            worst = float(error.nan_to_num(float("inf")).max())
    if stop > shared_stop:  # copied: integer tensors, grown rows, buffers; bit for bit (but for the dtype)
        copied = aligned.flat(t.aligned, shared_stop, stop).to(got.dtype)
        kept = got[shared_stop - start :]
        differ = kept != copied
        if kept.is_floating_point():
            differ &= ~(kept.isnan() & copied.isnan())
        bad += int(differ.sum())
    return bad, worst


def tolerance(value, ref, delta, alpha: float, out_dtype, in_dtypes) -> Any:
    """The largest |value − ref| a correct merge can show at each element, derived from extrapolate.py.

    `value` is the output, `ref` the float64 reference θ_aligned + α·Δ, `delta` = |Δ| = |θ_aligned − θ_sft|.
    With u the unit roundoff of the compute dtype (float32, or float64 when any side is float64):
    - the one final rounding to the output dtype: half a unit in its last place;
    - the coefficient held in the compute dtype: |c − α|·|Δ|, with c = α in float32 (the a + α·Δ path), or
      1 + α in float32 for the fused bfloat16/float16 lerp, whose weight is 1 + α;
    - the difference and the product, each rounded once in the compute dtype, and for lerp its 1 − weight:
      2u·m·|Δ| (3u·m·|Δ| fused), m the multiplier used;
    - a result narrower than the compute dtype is rounded twice (compute, then output): u·|ref|;
    - a float64 reference is itself rounded three times: u·(|ref| + 2|α|·|Δ|).
    Terms of order u² are covered by one factor (1 + 4u) on the roundings.
    """
    import torch  # torch loads on first use, not with the package

    compute = compute_dtype(out_dtype, *in_dtypes)
    u = torch.finfo(compute).eps / 2
    fused = out_dtype in (torch.bfloat16, torch.float16) and all(d == out_dtype for d in in_dtypes)
    weight = 1.0 + alpha if fused else alpha
    held = torch.tensor(weight, dtype=torch.float32 if fused else compute).item()
    multiplier = max(abs(alpha), abs(1.0 + alpha)) if fused else abs(alpha)
    roundings = 3 if fused else 2
    bound = 0.5 * ulp(value, out_dtype) + abs(held - weight) * delta + roundings * u * (1 + 4 * u) * multiplier * delta
    if out_dtype != compute:
        bound += u * (1 + 4 * u) * ref.abs()
    if compute == torch.float64:
        bound += u * (1 + 4 * u) * (ref.abs() + 2 * abs(alpha) * delta)
    return bound


def ulp(values, dtype):
    """The spacing of `dtype` at each value's magnitude: one rounding step (subnormals included)."""
    import torch  # torch loads on first use, not with the package

    info = torch.finfo(dtype)
    return info.eps * torch.exp2(torch.floor(torch.log2(values.abs().clamp_min(info.tiny))))
