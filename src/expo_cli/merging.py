"""`expo_cli.merge`, `expo_cli.sweep` and `expo_cli.plan`: the library API the CLI is a thin shell over.

Order of work: read and validate both checkpoints' headers, pair them, resolve α per tensor, check the outputs
and the free space; only then stream every tensor (read once, extrapolate at each α, write) into temporary
folders, add config, card and the aligned model's other files, fsync, and rename into place as the last step.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, sidefiles
from .alpha import AlphaRule, alpha_for, check_alpha, check_rules_match, formula, parse_rules
from .checkpoint import Checkpoint, dtype_name, itemsize, iter_chunks, load_checkpoint, load_consolidated, torch_dtype
from .constants import (
    CHUNK_ELEMENTS,
    DEFAULT_MAX_SHARD_SIZE,
    MISTRAL_INDEX_FILE,
    PYTORCH_INDEX_FILE,
    SAFETENSORS_INDEX_FILE,
)
from .errors import MismatchError, NonFiniteError, UsageError
from .metadata import AlignedCard, Source, default_model_name, provenance, write_config, write_model_card
from .output import HEADROOM, Staging, check_output, check_space, free_space, human_bytes, same_path, stale_partials
from .pairing import IDENTICAL, MergePlan, TensorPlan, check_configs, plan_merge
from .writer import Shard, ShardStream, mirror_shards, parse_size, plan_shards, write_index

DTYPE_CODES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
BASE_MEMORY = 256 * 2**20  # Python, torch and expo themselves, measured at about 200 MiB of anonymous memory


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
    skipped_files: dict[str, str] = field(default_factory=dict)  # not copied from the aligned folder, and why

    @property
    def bytes_per_s(self) -> float:
        return (self.bytes_read + self.bytes_written) / max(self.seconds, 1e-9)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "output": str(self.output), "gb_per_s": round(self.bytes_per_s / 1e9, 3)}


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
        lines.append(f"Disk: {human_bytes(self.disk_needed)} needed, {human_bytes(self.disk_free)} free")
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


@dataclass(frozen=True)
class MergeOptions:
    """Options of `merge`, `sweep` and `plan` (keyword arguments of the same names).

    Attributes:
        dtype: "bfloat16", "float16" or "float32" for every floating tensor; None keeps each aligned dtype.
        device: "cpu", "cuda" or "auto" (CUDA when available).
        max_shard_size: bytes per output shard, an int or a string such as "5GB" (decimal units).
        force: replace non-empty outputs.
        alpha_for: "REGEX=VALUE" rules giving matching tensors another α (first match wins).
        include: only tensors matching one of these are extrapolated (the others keep the aligned values).
        exclude: tensors matching one of these keep the aligned values.
        allow_architecture_mismatch: skip the config.json model_type/architectures check.
        strict: make inf/NaN already present in an input an error instead of a warning.
        progress: show a progress bar on stderr.
        warn: called with each warning for the user; default: printed to stderr.
        info: called with each informational message (the formula, what was handled); default: stderr.
        sft_revision, aligned_revision: branch, tag or commit when `sft`/`aligned` are Hub repo ids
            (or write `org/name@revision`).
        token: a Hub token; default: HF_TOKEN or the saved login.
        sft_id, aligned_id: the Hub repos (`org/name[@revision]`) local inputs were downloaded from, for the
            card's `base_model` and the provenance.
        model_name: the card's model_name and title (default: `<aligned name>-expo`; a sweep adds `-alpha-<α>`).
        copy, skip: globs of aligned-folder files to copy, or to leave out, whatever the side-file policy says.
        mistral_format: also extrapolate the Mistral-format weights (consolidated*.safetensors) both inputs have.
    """

    dtype: str | None = None
    device: str = "auto"
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE
    force: bool = False
    alpha_for: Sequence[str] = ()
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    allow_architecture_mismatch: bool = False
    strict: bool = False
    progress: bool = True
    warn: Callable[[str], None] | None = None
    info: Callable[[str], None] | None = None
    sft_revision: str | None = None
    aligned_revision: str | None = None
    token: str | None = None
    sft_id: str | None = None
    aligned_id: str | None = None
    model_name: str | None = None
    copy: Sequence[str] = ()
    skip: Sequence[str] = ()
    mistral_format: bool = False

    def warning(self, message: str) -> None:
        (self.warn or _stderr_warning)(message)

    def inform(self, message: str) -> None:
        (self.info or _stderr)(message)


def merge(sft: str | Path, aligned: str | Path, output: str | Path, alpha: float, **options: Any) -> MergeResult:
    """Write θ_aligned + α·(θ_aligned − θ_sft) as a new checkpoint folder at `output`.

    Args:
        sft, aligned: local checkpoint folders (safetensors or .bin, single file or sharded) or Hub repo ids
            (`org/name`, `org/name@revision`); an existing local folder wins over a repo id.
        output: the folder to create.
        alpha: the paper's α; 0 returns the aligned model, −1 the SFT model.
        **options: the fields of `MergeOptions`.

    Raises:
        ExpoError: a subclass naming what is wrong; the output never exists half-written.
    """
    opts = MergeOptions(**options)
    return _execute(_prepare(sft, aligned, {check_alpha(alpha): Path(output)}, opts), opts)[0]


def sweep(sft: str | Path, aligned: str | Path, output: str | Path, alphas: Sequence[float],
          **options: Any) -> list[MergeResult]:  # fmt: skip
    """One complete checkpoint per α in `output`/alpha-<α>, reading each input tensor once for all of them."""
    opts = MergeOptions(**options)
    return _execute(_prepare(sft, aligned, _sweep_targets(output, alphas), opts), opts)


def plan(sft: str | Path, aligned: str | Path, output: str | Path, alphas: Sequence[float], **options: Any) -> Plan:
    """Validate everything a merge (one α) or sweep (several) would do and describe it; write nothing."""
    targets = {check_alpha(alphas[0]): Path(output)} if len(alphas) == 1 else _sweep_targets(output, alphas)
    return _prepare(sft, aligned, targets, MergeOptions(**options), download=False).describe()


def _sweep_targets(output: str | Path, alphas: Sequence[float]) -> dict[float, Path]:
    targets = {check_alpha(a): Path(output) / f"alpha-{a:g}" for a in alphas}
    if len(targets) != len(alphas):
        raise UsageError(f"--alpha: a value is repeated in {', '.join(f'{a:g}' for a in alphas)}")
    return targets


@dataclass
class WeightSet:
    """One set of weight files the output gets: the Hugging Face shards, or Mistral's consolidated files."""

    sft: Checkpoint
    aligned: Checkpoint
    plan: MergePlan
    shards: list[Shard]
    index_name: str | None  # written when there are several shards

    @property
    def bytes_written(self) -> int:
        return sum(s.size for s in self.shards)


@dataclass
class _Prepared:
    """A validated run, ready to stream."""

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

    @property
    def main(self) -> WeightSet:
        return self.weights[0]

    def alphas(self, run_alpha: float, plan: MergePlan) -> dict[str, float]:
        return {t.name: alpha_for(t.name, self.rules, run_alpha) for t in plan.tensors}

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
        )


def _prepare(sft: str | Path, aligned: str | Path, targets: dict[float, Path], opts: MergeOptions,
             download: bool = True) -> _Prepared:  # fmt: skip
    """Every check that can be made before writing a byte: options, inputs, pairing, rules, outputs, space."""
    out_code = dtype_code(opts.dtype)
    rules = parse_rules(opts.alpha_for, opts.include, opts.exclude)
    if opts.mistral_format and rules:
        raise UsageError("--mistral-format cannot take per-tensor α rules: they name Hugging Face tensors, and "
                         "the two formats of one output must hold the same model")  # fmt: skip
    shard_size = _shard_size(opts.max_shard_size)
    device = _device(opts.device)
    hub_ids = {role: _hub_id(getattr(opts, f"{role}_id"), role) for role in ("sft", "aligned")}
    sft_ckpt, aligned_ckpt = resolve_inputs(sft, aligned, opts, rules, out_code, list(targets.values()), download)
    check_configs(sft_ckpt, aligned_ckpt, opts.allow_architecture_mismatch)
    merge_plan = plan_merge(sft_ckpt, aligned_ckpt, out_code)
    check_rules_match(rules, [t.name for t in merge_plan.tensors if t.sft is not None])
    weights = [WeightSet(sft_ckpt, aligned_ckpt, merge_plan, plan_shards(merge_plan.tensors, shard_size),
                         SAFETENSORS_INDEX_FILE)]  # fmt: skip
    folder = aligned_ckpt.path
    header_only = not aligned_ckpt.weight_files  # a dry run on Hub inputs: nothing downloaded yet
    if opts.mistral_format and not header_only:
        weights.append(_consolidated(sft_ckpt.path, folder, out_code))
    if not header_only and not opts.force and _identical(weights[0]):
        raise MismatchError(f"{IDENTICAL} (pass --force to write it anyway)")
    own = [f.name for f in aligned_ckpt.weight_files] + [SAFETENSORS_INDEX_FILE, PYTORCH_INDEX_FILE]
    side = None if header_only else sidefiles.select(folder, own, opts.copy, opts.skip, opts.mistral_format)
    sources = (Source.of(sft_ckpt.path, sft_ckpt.layout_sha256(), hub_ids["sft"]),
               Source.of(folder, aligned_ckpt.layout_sha256(), hub_ids["aligned"]))  # fmt: skip
    card = AlignedCard.read(folder) if not header_only else AlignedCard({}, "")
    base_name = opts.model_name or default_model_name(card, sources[1])
    names = {a: base_name if len(targets) == 1 else f"{base_name}-alpha-{a:g}" for a in targets}
    for weight_set in weights:
        for note in weight_set.plan.notes:
            opts.inform(f"Note: {note}")
    copied = sum((folder / f).stat().st_size for f in side.copied) if side else 0
    needed = 0
    for output in targets.values():
        check_output(output, {"sft": sft_ckpt.path, "aligned": folder}, opts.force)
        needed += sum(w.bytes_written for w in weights) + copied + HEADROOM
    check_space(next(iter(targets.values())), needed)
    leftovers = [p for output in targets.values() for p in stale_partials(output)]
    return _Prepared(weights, targets, rules, opts.dtype, device, needed, leftovers, sources, side, card, names)


def _hub_id(value: str | None, role: str) -> str | None:
    from .hub import REPO_ID

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

    from .extrapolate import compute_dtype

    with weights.sft, weights.aligned:
        for t in weights.plan.tensors:
            if t.sft is None:
                continue
            if t.shared != t.numel:
                return False  # a grown vocabulary
            wide = compute_dtype(torch_dtype(t.sft.dtype), torch_dtype(t.aligned.dtype))
            for start, stop in iter_chunks(t.shared, CHUNK_ELEMENTS):
                sft, aligned = weights.sft.flat(t.sft, start, stop), weights.aligned.flat(t.aligned, start, stop)
                if not torch.equal(sft.to(wide), aligned.to(wide)):
                    return False
    return True


def resolve_inputs(sft: str | Path, aligned: str | Path, opts: MergeOptions, rules: list[AlphaRule] | None = None,
                   out_code: str | None = None, outputs: Sequence[Path] = (),
                   download: bool = True) -> tuple[Checkpoint, Checkpoint]:  # fmt: skip
    """The two checkpoints, read and validated: local folders as they are, Hub repo ids from their headers first.

    A mismatched pair, a rule matching nothing or an output that exists is refused before any weight is
    downloaded; downloaded folders are then validated again in full like any local folder. With
    `download=False` (a dry run) Hub inputs stay header-only views: enough to plan, nothing to read.
    """
    from . import hub

    specs = {"sft": (str(sft), opts.sft_revision), "aligned": (str(aligned), opts.aligned_revision)}
    sources = {role: hub.parse_input(spec, revision) for role, (spec, revision) in specs.items()}
    for role, (spec, revision) in specs.items():
        if revision and sources[role] is None:
            raise UsageError(f"--{role}-revision: {spec} is a local folder, not a Hub repo id")
    local = {role: Path(spec) for role, (spec, _) in specs.items() if sources[role] is None}
    if (
        len(local) == 2
        and same_path(local["sft"], local["aligned"])
        or (len(local) == 0 and sources["sft"] == sources["aligned"])
    ):
        raise MismatchError(f"--sft and --aligned are both {specs['sft'][0]}: pass the SFT checkpoint the aligned "
                            "model was trained from")  # fmt: skip
    for output in outputs:
        check_output(output, local, opts.force)
    if all(source is None for source in sources.values()):
        return load_checkpoint(local["sft"], "sft"), load_checkpoint(local["aligned"], "aligned")
    from huggingface_hub import constants

    if constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE:
        paths = {role: hub.cached(source) if source else local[role] for role, source in sources.items()}
        return load_checkpoint(paths["sft"], "sft"), load_checkpoint(paths["aligned"], "aligned")
    remote = {role: hub.fetch_headers(source, role, opts.token) for role, source in sources.items() if source}
    views = {
        role: Checkpoint(Path(r.repo_id), r.config, r.tensors, "safetensors", []) if (r := remote.get(role))
        else load_checkpoint(local[role], role)
        for role in specs
    }  # fmt: skip
    check_configs(views["sft"], views["aligned"], opts.allow_architecture_mismatch)
    if all(view.tensors for view in views.values()):  # .bin repos have no headers to read remotely
        pairs = plan_merge(views["sft"], views["aligned"], out_code)
        check_rules_match(rules or [], [t.name for t in pairs.tensors if t.sft is not None])
    if not download:
        return views["sft"], views["aligned"]
    extra = sidefiles.MISTRAL_WEIGHTS if opts.mistral_format else ()
    paths = {role: hub.download(remote[role], opts.token, extra) if role in remote else local[role] for role in specs}
    return load_checkpoint(paths["sft"], "sft"), load_checkpoint(paths["aligned"], "aligned")


def _execute(prepared: _Prepared, opts: MergeOptions) -> list[MergeResult]:
    """Stream all targets at once, then finish each output and rename it into place."""
    started = time.perf_counter()
    for leftover in prepared.leftovers:
        opts.warning(f"removing {leftover}, left by an earlier run that did not finish")
        shutil.rmtree(leftover, ignore_errors=True)
    p = prepared
    side = p.side_files
    assert side is not None, "a run that writes has its inputs on disk"
    for alpha in p.targets:
        opts.inform(formula(alpha))
    with ExitStack() as stack:
        stagings = {alpha: stack.enter_context(Staging(output)) for alpha, output in p.targets.items()}
        checksums: dict[float, dict[str, str]] = {alpha: {} for alpha in p.targets}
        for weights in p.weights:
            stack.enter_context(weights.sft)
            stack.enter_context(weights.aligned)
            streams = {alpha: ShardStream(staging.path, weights.shards) for alpha, staging in stagings.items()}
            try:
                _stream(p, weights, streams, opts)
                for stream in streams.values():
                    stream.close()
            except BaseException:
                for stream in streams.values():
                    stream.abort()
                raise
            for alpha, stream in streams.items():
                checksums[alpha].update(stream.checksums)
                write_index(stagings[alpha].path, weights.shards, weights.index_name)
        for alpha, staging in stagings.items():
            record = provenance(
                alpha, formula(alpha), *p.sources, __version__, dtype=p.dtype,
                notes=[n for w in p.weights for n in w.plan.notes], rules=[r.to_json() for r in p.rules],
                shards=checksums[alpha], mistral_format=len(p.weights) > 1,
                side_files={"copied": side.copied, "skipped": side.listing()},
            )  # fmt: skip
            write_config(p.main.aligned.config, p.main.plan.dominant_dtype(), record, staging.path)
            sidefiles.copy_files(p.main.aligned.path, side.copied, staging.path)
            write_model_card(staging.path, record, p.card, p.main.aligned.config, p.model_names[alpha])
        for staging in stagings.values():
            staging.commit(opts.force)
    seconds = time.perf_counter() - started
    return [
        MergeResult(
            output=output.resolve(),
            alpha=alpha,
            formula=formula(alpha),
            device=str(p.device),
            tensors=sum(len(w.plan.tensors) for w in p.weights),
            extrapolated=sum(w.plan.extrapolated for w in p.weights),
            bytes_read=sum(w.plan.bytes_read for w in p.weights),
            bytes_written=sum(w.bytes_written for w in p.weights),
            shards=[s.filename for w in p.weights for s in w.shards],
            seconds=seconds,
            notes=[n for w in p.weights for n in w.plan.notes],
            skipped_files=side.listing(),
        )
        for alpha, output in p.targets.items()
    ]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _stderr_warning(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr)


def dtype_code(dtype: str | None) -> str | None:
    """The safetensors code of a --dtype value (None: keep each aligned dtype)."""
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


def _stream(p: _Prepared, weights: WeightSet, streams: dict[float, ShardStream], opts: MergeOptions) -> None:
    """Read every tensor once, chunk by chunk in output order, and hand each target its result."""
    import torch

    tensors = [t for s in weights.shards for t in s.tensors]
    per_target = {alpha: p.alphas(alpha, weights.plan) for alpha in streams}
    threads = torch.get_num_threads()
    # The writer and the hasher each keep a core busy: the arithmetic gets the others (measured on 2 cores:
    # one arithmetic thread merged the 6 GB pair ~15% faster than two fighting the hasher for a core).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    torch.set_num_threads(max(1, cores - 2))
    try:
        _stream_tensors(p, weights.sft, weights.aligned, streams, opts, tensors, per_target)
    finally:
        torch.set_num_threads(threads)


def _stream_tensors(p: _Prepared, sft: Checkpoint, aligned: Checkpoint, streams: dict[float, ShardStream],
                    opts: MergeOptions, tensors: list[TensorPlan],
                    per_target: dict[float, dict[str, float]]) -> None:  # fmt: skip
    """The streaming loop itself: chunks of each tensor, every target, the finiteness check per tensor."""
    from huggingface_hub.utils import tqdm

    from .engine import ChunkEngine

    engine = ChunkEngine(p.device, max((itemsize(t.out_dtype) for t in tensors), default=1), CHUNK_ELEMENTS)
    total = sum(t.nbytes for t in tensors) * len(streams)
    with tqdm(total=total, unit="B", unit_scale=True, desc="Merging", disable=not opts.progress, file=sys.stderr,
              dynamic_ncols=True) as bar:  # fmt: skip
        for count, t in enumerate(tensors, 1):
            chunks = list(iter_chunks(t.numel, CHUNK_ELEMENTS))
            probes: dict[float, list] = {alpha: [] for alpha in streams}
            for i, (start, stop) in enumerate(chunks):
                if i + 1 < len(chunks):
                    _prefetch(t, sft, aligned, *chunks[i + 1])
                elif count < len(tensors):
                    nxt = tensors[count]
                    _prefetch(nxt, sft, aligned, 0, min(nxt.numel, CHUNK_ELEMENTS))
                shared_stop = min(stop, t.shared) if t.sft is not None else start
                if shared_stop > start:
                    computed = []
                    for run_alpha, stream in streams.items():
                        alpha = per_target[run_alpha][t.name]
                        if alpha == 0 and t.out_dtype == t.aligned.dtype:  # bit for bit the aligned tensor
                            stream.write(aligned.raw(t.aligned, start, shared_stop))
                        elif alpha == -1 and t.out_dtype == t.sft.dtype:  # bit for bit the SFT tensor
                            stream.write(sft.raw(t.sft, start, shared_stop))
                        else:
                            computed.append((run_alpha, alpha, stream))
                    if computed:
                        results = engine.extrapolate(
                            sft.flat(t.sft, start, shared_stop), aligned.flat(t.aligned, start, shared_stop),
                            torch_dtype(t.out_dtype), [(alpha, stream) for _, alpha, stream in computed],
                        )  # fmt: skip
                        for (run_alpha, _, _), probe in zip(computed, results, strict=True):
                            probes[run_alpha].append(probe)
                if stop > shared_stop:  # copied unchanged: non-floating tensors, grown vocabulary rows
                    lo = max(start, shared_stop)
                    for stream in streams.values():
                        if t.out_dtype == t.aligned.dtype:
                            stream.write(aligned.raw(t.aligned, lo, stop))
                        else:
                            engine.convert(aligned.flat(t.aligned, lo, stop), torch_dtype(t.out_dtype), stream)
                bar.update((stop - start) * itemsize(t.out_dtype) * len(streams))
            for run_alpha, found in probes.items():
                if found and not engine.finite(found):
                    _nonfinite(t, sft, aligned, per_target[run_alpha][t.name], opts)
            bar.set_postfix_str(f"{count}/{len(tensors)} tensors", refresh=False)


def _prefetch(t: TensorPlan, sft: Checkpoint, aligned: Checkpoint, start: int, stop: int) -> None:
    aligned.prefetch(t.aligned, start, stop)
    if t.sft is not None:
        sft.prefetch(t.sft, start, min(stop, t.shared))


def _nonfinite(t: TensorPlan, sft: Checkpoint, aligned: Checkpoint, alpha: float, opts: MergeOptions) -> None:
    """Explain an inf/NaN result: inherited from an input (a warning) or made by the arithmetic (an error)."""
    import torch

    assert t.sft is not None
    for role, ckpt, info in (("aligned", aligned, t.aligned), ("sft", sft, t.sft)):
        for start, end in iter_chunks(t.shared, CHUNK_ELEMENTS):
            if not bool(torch.isfinite(ckpt.flat(info, start, end)).all()):
                message = f"tensor {t.name!r}: the {role} input already holds inf/NaN, so the output does too"
                if opts.strict:
                    raise NonFiniteError(f"{message} (--strict)")
                opts.warning(message)
                return
    hint = "; try --dtype float32 or a smaller --alpha" if t.out_dtype != "F32" else "; try a smaller --alpha"
    raise NonFiniteError(
        f"tensor {t.name!r}: α={alpha:g} overflows {dtype_name(t.out_dtype)} (inf/NaN in the result){hint}"
    )
