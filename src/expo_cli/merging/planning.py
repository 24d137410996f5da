"""Planning a run: every check that can be made before writing a byte, and the plan that results.

`prepare` resolves both inputs (`inputs.resolve_inputs`), pairs their tensors, resolves α per tensor and target,
plans the output shards, sorts the side files, names the sources for the provenance without local paths, and
checks the outputs and the free space. The `RunPlan` it returns holds the opened sources for execution, and
serialises (`to_json`) to what a run will do: inputs, pairing, α per tensor and target, shards. `Plan` is what
`--dry-run` prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..alpha import AlphaRule, alpha_for, check_rules_match, parse_rules
from ..constants import (
    CHUNK_ELEMENTS,
    MISTRAL_INDEX_FILE,
    PYTORCH_INDEX_FILE,
    SAFETENSORS_INDEX_FILE,
)
from ..core.pairing import IDENTICAL, MergePlan, plan_merge
from ..core.sources import TensorSource, blocks, dtype_code, itemsize, layout_sha256, torch_dtype
from ..core.writer import mirror_shards, parse_size, plan_shards
from ..errors import MismatchError, UsageError
from ..fsutil import HEADROOM, check_space, free_space, human_bytes
from ..inputs.adapters import ADAPTER_CONFIG, LoraSource, changed_tensors, input_folders, own_tensors
from ..inputs.checkpoint import load_consolidated
from ..inputs.hub import REPO_ID, RemoteCheckpoint, download
from ..inputs.ranged import RangedSource
from ..inputs.resolve import resolve_inputs
from ..options import MergeOptions
from . import sidefiles
from .adapter_output import adapter_weight_set, publishable_base
from .card import AlignedCard, Source, default_model_name
from .staging import stale_partials
from .weights import WeightSet

BASE_MEMORY = 256 * 2**20  # Python, torch and expo themselves, measured at about 200 MiB of anonymous memory


@dataclass
class Plan:
    """Everything a merge would do, decided from headers alone: what `--dry-run` prints."""

    outputs: dict[float, Path]
    tensors: int
    extrapolated: int
    bytes_read: int
    bytes_written: int
    shards: list[tuple[str, int]]
    disk_needed: int
    disk_free: int
    peak_memory: int
    alpha_groups: dict[float, dict[str, int]]  # run α -> {"α=<v>": tensor count}
    rules: list[dict[str, Any]]
    notes: list[str]
    leftovers: list[str]
    copied_files: list[str] | None  # None: Hub inputs in a dry run, sorted once downloaded
    skipped_files: dict[str, str] | None
    model_names: dict[float, str]
    streamed: bool = False  # --stream: disk_needed is the scratch folder's peak

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outputs"] = {f"{a:g}": str(p) for a, p in self.outputs.items()}
        data["alpha_groups"] = {f"{a:g}": groups for a, groups in self.alpha_groups.items()}
        data["shards"] = [{"file": name, "bytes": size} for name, size in self.shards]
        data["model_names"] = {f"{a:g}": name for a, name in self.model_names.items()}
        return data

    def describe(self) -> list[str]:
        lines = [f"Outputs: {', '.join(f'{p} (α={a:g})' for a, p in self.outputs.items())}"]
        lines.append(f"Tensors: {self.tensors} ({self.extrapolated} extrapolated, the rest copied from aligned)")
        lines.append(f"Read: {human_bytes(self.bytes_read)} (each input byte once)")
        lines.append(f"Write: {human_bytes(self.bytes_written)} per output in {len(self.shards)} shard(s):")
        lines += [f"  {name}  {human_bytes(size)}" for name, size in self.shards]
        where = " in the scratch folder at most (--stream: the shard being written and the one uploading)"
        lines.append(
            f"Disk: {human_bytes(self.disk_needed)} needed{where if self.streamed else ''}, "
            f"{human_bytes(self.disk_free)} free"
        )
        lines.append(f"Peak memory (estimate, excluding the page cache): {human_bytes(self.peak_memory)}")
        for alpha, groups in self.alpha_groups.items():
            counts = ", ".join(f"{n} tensors at {g}" for g, n in groups.items())
            lines.append(f"α per tensor at --alpha {alpha:g}: {counts}")
        lines += [f"Rule {r['rule']}: {r['tensors']} tensor(s)" for r in self.rules]
        lines.append(f"Model name (card): {', '.join(self.model_names.values())}")
        if self.copied_files is None:
            lines.append("Side files: chosen by the side-file policy once the Hub inputs are downloaded")
        else:
            lines.append(f"Copied from the aligned folder: {', '.join(self.copied_files) or 'nothing'}")
        lines += [f"Not copied: {path} ({reason})" for path, reason in (self.skipped_files or {}).items()]
        lines += [f"Note: {n}" for n in self.notes]
        lines += [f"Leftover from an earlier run (a real run removes it): {p}" for p in self.leftovers]
        return lines


@dataclass
class RunPlan:
    """A validated run, ready to execute: what `prepare` decided, with the sources it opened."""

    weights: list[WeightSet]  # the HF shards first
    targets: dict[float, Path]
    rules: list[AlphaRule]
    dtype: str | None
    device: Any
    disk_needed: int
    leftovers: list[Path]
    sources: tuple[Source, Source]  # sft, aligned
    side_files: sidefiles.SideFiles | None  # None: header-only Hub inputs (a dry run)
    card: AlignedCard
    model_names: dict[float, str]
    streamed: bool = False
    side_folder: Path | None = None  # where the side files come from (with --stream: a download of just those)
    tuning: dict[str, Any] | None = None  # how expo tune chose α
    adapter_config: dict[str, Any] | None = None  # --as-adapter: the output is a PEFT adapter with this config

    @property
    def main(self) -> WeightSet:
        return self.weights[0]

    def alphas(self, run_alpha: float, plan: MergePlan) -> dict[str, float]:
        return {t.name: alpha_for(t.name, self.rules, run_alpha) for t in plan.tensors}

    def to_json(self) -> dict[str, Any]:
        """What the run will do, decided from headers alone and the same in every process that plans it:
        inputs, pairing, α per tensor and target, shards. No local path: outputs are named by folder name."""
        return {
            "inputs": {"sft": self.sources[0].to_json(), "aligned": self.sources[1].to_json()},
            "targets": {
                f"{a:g}": {"output": p.name, "model_name": self.model_names[a]} for a, p in self.targets.items()
            },
            "dtype": self.dtype,
            "rules": [r.to_json() for r in self.rules],
            "weights": [
                {
                    "index": w.index_name,
                    "tensors": [
                        {
                            "name": t.name,
                            "sft": t.sft.name if t.sft else None,
                            "out_dtype": t.out_dtype,
                            "shape": list(t.shape),
                            "shared": t.shared,
                            "alpha": {f"{a:g}": alpha_for(t.name, self.rules, a) for a in self.targets},
                        }
                        for t in w.plan.tensors
                    ],
                    "shards": [
                        {"file": s.filename, "bytes": s.size, "tensors": [t.name for t in s.tensors]} for s in w.shards
                    ],
                }
                for w in self.weights
            ],
        }

    def describe(self) -> Plan:
        groups = {}
        for run_alpha in self.targets:
            counts: dict[str, int] = {}
            for t in self.main.plan.tensors:
                key = f"α={alpha_for(t.name, self.rules, run_alpha):g}" if t.sft is not None else "copied"
                counts[key] = counts.get(key, 0) + 1
            groups[run_alpha] = counts
        names = [t.name for t in self.main.plan.tensors]
        rules = [{**r.to_json(), "tensors": sum(map(r.matches, names))} for r in self.rules]
        tensors = [t for w in self.weights for t in w.plan.tensors]
        widest = max((itemsize(t.out_dtype) for t in tensors), default=1)
        buffers = (4 * widest + 2 * 8) * CHUNK_ELEMENTS  # output ring + widened scratch, at most
        return Plan(
            outputs=dict(self.targets),
            tensors=len(tensors),
            extrapolated=sum(w.plan.extrapolated for w in self.weights),
            bytes_read=sum(w.plan.bytes_read for w in self.weights),
            bytes_written=sum(w.bytes_written for w in self.weights),
            shards=[(s.filename, s.size) for w in self.weights for s in w.shards],
            disk_needed=self.disk_needed,
            disk_free=free_space(next(iter(self.targets.values()))),
            peak_memory=BASE_MEMORY + buffers,
            alpha_groups=groups,
            rules=rules,
            notes=[n for w in self.weights for n in w.plan.notes],
            leftovers=[str(p) for p in self.leftovers],
            copied_files=self.side_files.copied if self.side_files else None,
            skipped_files=self.side_files.listing() if self.side_files else None,
            model_names=self.model_names,
            streamed=self.streamed,
        )


def prepare(
    sft: str | Path,
    aligned: str | Path,
    targets: dict[float, Path],
    opts: MergeOptions,
    download: bool = True,
    whole: bool = True,
) -> RunPlan:
    """Every check that can be made before writing a byte: options, inputs, pairing, rules, outputs, space."""
    out_code = dtype_code(opts.dtype)
    rules = parse_rules(opts.alpha_for, opts.include, opts.exclude)
    if opts.mistral_format and rules:
        raise UsageError(
            "--mistral-format cannot take per-tensor α rules: they name Hugging Face tensors, and "
            "the two formats of one output must hold the same model"
        )
    max_shard = shard_size(opts.max_shard_size)
    run_device = device(opts.device)
    hub_ids = {role: _hub_id(getattr(opts, f"{role}_id"), role) for role in ("sft", "aligned")}
    sft_ckpt, aligned_ckpt = resolve_inputs(
        sft,
        aligned,
        sft_revision=opts.sft_revision,
        aligned_revision=opts.aligned_revision,
        token=opts.token,
        allow_architecture_mismatch=opts.allow_architecture_mismatch,
        rules=rules,
        out_code=out_code,
        outputs=list(targets.values()),
        force=opts.force,
        download=download and not opts.stream,
        extra_patterns=sidefiles.MISTRAL_WEIGHTS if opts.mistral_format else (),
        base=opts.base,
        adapter_stack=opts.adapter_stack,
        warn=opts.warning,
    )
    merge_plan = plan_merge(sft_ckpt, aligned_ckpt, out_code)
    check_rules_match(rules, [t.name for t in merge_plan.tensors if t.sft is not None])
    weights = [
        WeightSet(
            sft_ckpt, aligned_ckpt, merge_plan, plan_shards(merge_plan.tensors, max_shard), SAFETENSORS_INDEX_FILE
        )
    ]
    folder = aligned_ckpt.path
    if opts.stream:
        if opts.mistral_format:
            raise UsageError("--stream writes the Hugging Face format only; drop --mistral-format")
        if download:
            sft_ckpt, aligned_ckpt, folder = _ranged(sft_ckpt, aligned_ckpt, hub_ids, opts.token)
            weights[0] = WeightSet(sft_ckpt, aligned_ckpt, merge_plan, weights[0].shards, SAFETENSORS_INDEX_FILE)
    header_only = not aligned_ckpt.readable  # a dry run on Hub inputs: nothing downloaded yet
    if opts.mistral_format and not header_only:
        weights.append(_consolidated(sft_ckpt.path, folder, out_code))
    if not header_only and not opts.force and _identical(weights[0]):
        raise MismatchError(f"{IDENTICAL} (pass --force to write it anyway)")
    sources = (
        Source.of(sft_ckpt.path, layout_sha256(own_tensors(sft_ckpt)), hub_ids["sft"]),
        Source.of(folder, layout_sha256(own_tensors(aligned_ckpt)), hub_ids["aligned"]),
    )
    adapter_config = None
    if opts.as_adapter:
        if opts.mistral_format:
            raise UsageError("--as-adapter writes a PEFT adapter; drop --mistral-format")
        adapter_set, adapter_config = adapter_weight_set(sft_ckpt, aligned_ckpt, list(targets), bool(rules))
        adapter_config = publishable_base(adapter_config, sources[0].name)
        weights = [adapter_set]
    own = [SAFETENSORS_INDEX_FILE, PYTORCH_INDEX_FILE, *(t.file.name for t in aligned_ckpt.tensors.values())]
    if isinstance(aligned_ckpt, LoraSource):  # the adapter's own files are the input, not side files
        own += [ADAPTER_CONFIG, *(f.name for f in aligned_ckpt.adapter.weights.weight_files)]
    side = None if header_only else sidefiles.select(folder, own, opts.copy, opts.skip, opts.mistral_format)
    if side is not None and isinstance(aligned_ckpt, LoraSource) and not opts.as_adapter:  # missing: from the base
        for fallback in input_folders(sft_ckpt):
            sidefiles.borrow(side, fallback)
    card = AlignedCard.read(folder) if not header_only else AlignedCard({}, "")
    base_name = opts.model_name or default_model_name(card, sources[1])
    names = {a: base_name if len(targets) == 1 else f"{base_name}-alpha-{a:g}" for a in targets}
    for weight_set in weights:
        for note in weight_set.plan.notes:
            opts.inform(f"Note: {note}")
    copied = sum((side.borrowed.get(f, folder) / f).stat().st_size for f in side.copied) if side else 0
    needed = len(targets) * (sum(w.bytes_written for w in weights) + copied + HEADROOM)
    if opts.stream:  # the shard being written, the one being uploaded, and the small files of the commit
        metadata = sum(
            (folder / name).stat().st_size for name in ("config.json", "README.md") if (folder / name).exists()
        )
        shards = weights[0].shards
        needed = 2 * max((s.size for s in shards), default=0) + copied + metadata + 16_384 + 256 * len(shards)
    if whole and targets:  # a part of a job array checks the space for its own shards
        check_space(next(iter(targets.values())), needed)
    leftovers = [p for output in targets.values() for p in stale_partials(output)]
    return RunPlan(
        weights,
        targets,
        rules,
        opts.dtype,
        run_device,
        needed,
        leftovers,
        sources,
        side,
        card,
        names,
        opts.stream,
        folder,
        opts.tuning,
        adapter_config,
    )


def _ranged(
    sft: TensorSource, aligned: TensorSource, hub_ids: dict[str, str | None], token: str | None
) -> tuple[TensorSource, TensorSource, Path]:
    """--stream: Hub inputs read by range requests; only the aligned repo's side files are downloaded."""
    pair = {"sft": sft, "aligned": aligned}
    if not any(isinstance(source, RemoteCheckpoint) for source in pair.values()):
        raise UsageError("--stream reads Hub inputs by ranges; both inputs are local folders (drop --stream)")
    for role, source in pair.items():
        if isinstance(source, RemoteCheckpoint):
            if not source.tensors:
                raise UsageError(f"--stream: --{role} {source.repo_id} has no safetensors weights to read by ranges")
            hub_ids[role] = hub_ids[role] or f"{source.repo_id}@{source.sha}"
            pair[role] = RangedSource(source, token)
    folder = download(aligned, token, weights=False) if isinstance(aligned, RemoteCheckpoint) else aligned.path
    return pair["sft"], pair["aligned"], folder


def _hub_id(value: str | None, role: str) -> str | None:
    if value is not None and not REPO_ID.match(value):
        raise UsageError(f"--{role}-id {value!r}: write the Hub repo as org/name or org/name@revision")
    return value


def _consolidated(sft: Path, aligned: Path, out_code: str | None) -> WeightSet:
    """Mistral-format weights of both inputs, paired like the HF ones; the output keeps the aligned file layout."""
    if not sidefiles.has_mistral_format(aligned):
        raise UsageError(
            f"--mistral-format: --aligned {aligned.name} has no consolidated*.safetensors beside params.json"
        )
    sft_ckpt, aligned_ckpt = load_consolidated(sft, "sft"), load_consolidated(aligned, "aligned")
    merge_plan = plan_merge(sft_ckpt, aligned_ckpt, out_code)
    shards = mirror_shards(merge_plan.tensors, [t.aligned.file.name for t in merge_plan.tensors])
    return WeightSet(sft_ckpt, aligned_ckpt, merge_plan, shards, MISTRAL_INDEX_FILE)


def _identical(weights: WeightSet) -> bool:
    """Whether every paired tensor is equal on both sides, so that extrapolation would change nothing.

    Stops at the first difference, which for a real SFT -> aligned pair is in the first chunk read.
    """
    import torch

    from ..core.extrapolate import compute_dtype

    changed = changed_tensors(weights.sft, weights.aligned)
    with weights.sft, weights.aligned:
        for t in weights.plan.tensors:
            if t.sft is None or changed is not None and t.name not in changed:
                continue
            if t.shared != t.numel:
                return False  # a grown vocabulary
            wide = compute_dtype(torch_dtype(t.sft.dtype), torch_dtype(t.aligned.dtype))
            for start, stop in blocks(t.shared, t.aligned.row_numel, CHUNK_ELEMENTS):
                sft, aligned = weights.sft.flat(t.sft, start, stop), weights.aligned.flat(t.aligned, start, stop)
                if not torch.equal(sft.to(wide), aligned.to(wide)):
                    return False
    return True


def shard_size(value: int | str) -> int:
    try:
        size = parse_size(value)
    except ValueError as err:
        raise UsageError(f"--max-shard-size {value!r}: use a size such as 5GB, 500MB or 2000000000") from err
    if size <= 0:
        raise UsageError(f"--max-shard-size {value!r}: must be positive")
    return size


def device(name: str):  # torch.device, imported lazily
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"--device {name!r}: choose cpu, cuda or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu")
    return torch.device(name)
