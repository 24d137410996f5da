"""Preparing a run: every check that can be made before writing a byte, and the `PreparedRun` that results.

`prepare` resolves both inputs (`inputs.resolve_inputs`, from headers before any download), pairs their tensors,
checks the α rules against them, decides which weight sets the output gets, sorts the side files, names the
sources for the provenance without local paths, and checks the outputs and the free space. Option values and
conflicts were already checked when the `MergeOptions` were made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..alpha import check_rules_match
from ..constants import (
    CHUNK_ELEMENTS,
    CONFIG_NAME,
    MISTRAL_INDEX_FILE,
    PYTORCH_INDEX_FILE,
    REPOCARD_NAME,
    SAFETENSORS_INDEX_FILE,
)
from ..core.pairing import IDENTICAL, Pairing, pair_tensors
from ..core.sources import TensorSource, blocks, compute_dtype, layout_sha256, torch_dtype
from ..core.writer import mirror_shards, plan_shards
from ..errors import MismatchError, UsageError
from ..fsutil import HEADROOM, available_cores, check_space, read_ahead
from ..inputs import retry
from ..inputs.adapters import ADAPTER_CONFIG, LoraSource, changed_tensors, input_folders, own_tensors
from ..inputs.checkpoint import load_consolidated
from ..inputs.hub import RemoteCheckpoint, download
from ..inputs.lowrank import LowRankUpdate
from ..inputs.ranged import RangedSource
from ..inputs.resolve import resolve_inputs
from ..inputs.trajectory import Trajectory
from ..options import MergeOptions
from ..trajectory import step_for_alpha
from . import sidefiles
from .adapter_output import adapter_weight_set, publishable_base
from .card import AlignedCard, Source, default_model_name
from .direction import Named, swapped
from .run import PreparedRun
from .staging import stale_partials
from .weights import WeightSet

# --stream keeps two shards in the scratch folder (the one being written, the one uploading) and the commit's small
# files: config.json and the card (as large as the aligned model's), the index (about INDEX_BYTES_PER_SHARD per
# shard), and what else the commit writes (COMMIT_FILES_BYTES at most).
INDEX_BYTES_PER_SHARD = 256
READ_AHEAD = 256 * 2**20  # bytes of the inputs the kernel is asked to read while torch imports
COMMIT_FILES_BYTES = 16_384


def prepare(
    sft: str | Path | None,
    aligned: str | Path | None,
    targets: dict[float, Path],
    opts: MergeOptions,
    download: bool = True,
    whole: bool = True,
) -> PreparedRun:
    """Every check that can be made before writing a byte: inputs, pairing, rules, outputs, space.

    `download=False` (a dry run) keeps Hub inputs as header-only views; `whole=False` (a part of a job array)
    leaves the space check to the part, which knows its own shards.
    """
    check_device_name(opts.device)
    retry.new_run()
    milestones = opts.milestones
    if milestones is not None:
        if sft is not None or aligned is not None:
            raise UsageError("--trajectory names every checkpoint: drop --sft and --aligned")
        sft, aligned = milestones[0].checkpoint, milestones[-1].checkpoint
    elif aligned is None:
        raise UsageError("--aligned is required (or --trajectory)")

    def resolved(sft: str | Path | None, aligned: str | Path) -> tuple[TensorSource, TensorSource]:
        return resolve_inputs(
            sft,
            aligned,
            sft_revision=opts.sft_revision,
            aligned_revision=opts.aligned_revision,
            token=opts.token,
            allow_architecture_mismatch=opts.allow_architecture_mismatch,
            rules=opts.rules,
            out_code=opts.out_code,
            outputs=list(targets.values()),
            force=opts.force,
            download=download and not opts.stream,
            extra_patterns=sidefiles.MISTRAL_WEIGHTS if opts.mistral_format else (),
            base=opts.base,
            adapter_stack=opts.adapter_stack,
            warn=opts.warning,
        )

    sft_ckpt, aligned_ckpt = resolved(sft, aligned)
    middle = [resolved(sft, m.checkpoint)[1] for m in milestones[1:-1]] if milestones is not None else []
    checkpoint_folders = [c.path for c in (sft_ckpt, *middle, aligned_ckpt)] if milestones is not None else None
    if milestones is not None and len(milestones) > 2:  # two checkpoints: the line through them is ExPO itself
        trajectory = Trajectory(milestones, [sft_ckpt, *middle, aligned_ckpt])
        trajectory.check()
        sft_ckpt, aligned_ckpt = trajectory.at(milestones[0].step), trajectory.at(milestones[-1].step)
    pairing = pair_tensors(sft_ckpt, aligned_ckpt, opts.out_code)
    if opts.delta_rank is not None:
        aligned_ckpt = LowRankUpdate(sft_ckpt, aligned_ckpt, opts.delta_rank, pairing.tensors)
    # Headers read and paired without torch: the kernel starts reading the first blocks while torch imports.
    read_ahead(
        dict.fromkeys(f for t in pairing.tensors for f in (t.aligned.file, t.sft and t.sft.file) if f), READ_AHEAD
    )
    run_device = device(opts.device)
    check_rules_match(opts.rules, [t.name for t in pairing.tensors if t.sft is not None])
    hub_ids = {"sft": opts.sft_id, "aligned": opts.aligned_id}
    folder = aligned_ckpt.path
    if opts.stream and download:
        sft_ckpt, aligned_ckpt, folder = _ranged(sft_ckpt, aligned_ckpt, hub_ids, opts)
    header_only = not aligned_ckpt.readable  # a dry run on Hub inputs: nothing downloaded yet
    if not header_only and not opts.force and _identical(sft_ckpt, aligned_ckpt, pairing):
        raise MismatchError(f"{IDENTICAL} (pass --force to write it anyway)")
    if not opts.force and milestones is None and not any(isinstance(c, LoraSource) for c in (sft_ckpt, aligned_ckpt)):
        named = [
            Named.of(str(spec), hub_ids[role], ckpt.config, ckpt.path if ckpt.readable else None)
            for spec, role, ckpt in ((sft, "sft", sft_ckpt), (aligned, "aligned", aligned_ckpt))
        ]
        if reason := swapped(*named):
            raise MismatchError(reason)
    sources = (
        Source.of(sft_ckpt.path, layout_sha256(own_tensors(sft_ckpt)), hub_ids["sft"]),
        Source.of(folder, layout_sha256(own_tensors(aligned_ckpt)), hub_ids["aligned"]),
    )
    weights, adapter_config = _weight_sets(sft_ckpt, aligned_ckpt, pairing, folder, list(targets), sources[0], opts)
    for weight_set in weights:
        for note in weight_set.pairing.notes:
            opts.inform(f"Note: {note}")
    side = None if header_only else _side_files(sft_ckpt, aligned_ckpt, folder, opts)
    card = AlignedCard.read(folder) if not header_only else AlignedCard({}, "")
    needed = _disk_needed(weights, side, folder, len(targets), opts.stream)
    if whole and targets:
        check_space(next(iter(targets.values())), needed)
    return PreparedRun(
        weights=weights,
        targets=targets,
        rules=opts.rules,
        dtype=opts.dtype,
        device=run_device,
        disk_needed=needed,
        leftovers=[p for output in targets.values() for p in stale_partials(output)],
        sources=sources,
        side_files=side,
        card=card,
        model_names=_model_names(card, sources[1], list(targets), opts),
        streamed=opts.stream,
        side_folder=folder,
        tuning=opts.tuning,
        adapter_config=adapter_config,
        streams=shard_streams(opts, run_device, sum(len(w.shards) for w in weights)),
        milestones=milestones,
        checkpoint_folders=checkpoint_folders,
        low_rank=aligned_ckpt if isinstance(aligned_ckpt, LowRankUpdate) else None,
    )


def shard_streams(opts: MergeOptions, device: Any, shards: int) -> int:
    """How many shards are written at once: --streams, else one per two cores and at least two on a CPU (the
    arithmetic, the kernel's copy into the page cache and SHA-256 of one stream do not fill two cores); one on a
    GPU (its arithmetic is not the limit) and with --stream (the scratch folder holds two shards at most)."""
    if opts.stream or getattr(device, "type", "cpu") == "cuda":
        return 1
    wanted = opts.streams or max(2, available_cores() // 2)
    return max(1, min(wanted, shards))


def _weight_sets(
    sft: TensorSource,
    aligned: TensorSource,
    pairing: Pairing,
    folder: Path,
    alphas: list[float],
    sft_source: Source,
    opts: MergeOptions,
) -> tuple[list[WeightSet], dict[str, Any] | None]:
    """Which weight files the output gets, and the adapter config when the output is a PEFT adapter.

    The Hugging Face shards; with --mistral-format also the consolidated files; with --as-adapter instead one
    adapter file.
    """
    if opts.as_adapter:
        adapter_set, config = adapter_weight_set(sft, aligned, alphas, bool(opts.rules))
        return [adapter_set], publishable_base(config, sft_source.name)
    shards = plan_shards(pairing.tensors, opts.shard_bytes)
    weights = [WeightSet(sft, aligned, pairing, shards, SAFETENSORS_INDEX_FILE)]
    if opts.mistral_format and aligned.readable:
        weights.append(_consolidated(sft.path, folder, opts.out_code))
    return weights, None


def _side_files(sft: TensorSource, aligned: TensorSource, folder: Path, opts: MergeOptions) -> sidefiles.SideFiles:
    """The aligned folder's other files the output carries (see `sidefiles`); for an adapter merged into its
    base, what the adapter folder lacks (tokenizer, generation config) comes from the base's folders."""
    own = [SAFETENSORS_INDEX_FILE, PYTORCH_INDEX_FILE, *(t.file.name for t in aligned.tensors.values())]
    if isinstance(aligned, LoraSource):  # the adapter's own files are the input, not side files
        own += [ADAPTER_CONFIG, *(f.name for f in aligned.adapter.weights.weight_files)]
    side = sidefiles.select(folder, own, opts.copy, opts.skip, opts.mistral_format)
    if isinstance(aligned, LoraSource) and not opts.as_adapter:
        for fallback in input_folders(sft):
            sidefiles.borrow(side, fallback)
    return side


def _disk_needed(
    weights: list[WeightSet], side: sidefiles.SideFiles | None, folder: Path, outputs: int, streamed: bool
) -> int:
    """Bytes the run needs on the output's file system: every output whole, or with --stream the scratch
    folder's peak (see INDEX_BYTES_PER_SHARD)."""
    copied = sum((side.borrowed.get(f, folder) / f).stat().st_size for f in side.copied) if side else 0
    if not streamed:
        return outputs * (sum(w.bytes_written for w in weights) + copied + HEADROOM)
    shards = weights[0].shards
    metadata = sum((folder / n).stat().st_size for n in (CONFIG_NAME, REPOCARD_NAME) if (folder / n).exists())
    largest = max((s.size for s in shards), default=0)
    return 2 * largest + copied + metadata + COMMIT_FILES_BYTES + INDEX_BYTES_PER_SHARD * len(shards)


def sweep_label(alpha: float, opts: MergeOptions) -> str:
    """What tells one output of a sweep from the others: `alpha-<α>`, or for a trajectory `step-<step>`."""
    if opts.milestones is not None:
        return f"step-{step_for_alpha([m.step for m in opts.milestones], alpha):g}"
    return f"alpha-{alpha:g}"


def _model_names(card: AlignedCard, aligned: Source, alphas: list[float], opts: MergeOptions) -> dict[float, str]:
    """The card's model name per output: --model-name or `<aligned name>-expo`; a sweep adds its label."""
    base = opts.model_name or default_model_name(card, aligned)
    return {a: base if len(alphas) == 1 else f"{base}-{sweep_label(a, opts)}" for a in alphas}


def _ranged(
    sft: TensorSource, aligned: TensorSource, hub_ids: dict[str, str | None], opts: MergeOptions
) -> tuple[TensorSource, TensorSource, Path]:
    """--stream: Hub inputs read by range requests; of the aligned repo, only the files the output may carry are
    downloaded (the side-file policy's loader files and the custom code its auto_map names), each within
    MAX_SIDE_FILE_BYTES by the size the Hub lists."""
    pair = {"sft": sft, "aligned": aligned}
    if not any(isinstance(source, RemoteCheckpoint) for source in pair.values()):
        raise UsageError("--stream reads Hub inputs by ranges; both inputs are local folders (drop --stream)")
    for role, source in pair.items():
        if isinstance(source, RemoteCheckpoint):
            if not source.tensors:
                raise UsageError(f"--stream: --{role} {source.repo_id} has no safetensors weights to read by ranges")
            hub_ids[role] = hub_ids[role] or f"{source.repo_id}@{source.sha}"
            pair[role] = RangedSource(source, opts.token, opts.connections)
    if not isinstance(aligned, RemoteCheckpoint):
        return pair["sft"], pair["aligned"], aligned.path
    side = sidefiles.loader_patterns(opts.copy, opts.mistral_format)
    folder = download(aligned, opts.token, weights=False, side=side, skip=opts.skip)
    fetched: set[str] = set()
    # the custom code auto_map names, and what it imports, module by module (each a plain .py of the repo)
    while wanted := (sidefiles.custom_code_wanted(folder) & set(aligned.listed)) - fetched:
        fetched |= wanted
        side = [*side, *sorted(wanted)]
        folder = download(aligned, opts.token, weights=False, side=side, skip=opts.skip)
    return pair["sft"], pair["aligned"], folder


def _consolidated(sft: Path, aligned: Path, out_code: str | None) -> WeightSet:
    """Mistral-format weights of both inputs, paired like the HF ones; the output keeps the aligned file layout."""
    if not sidefiles.has_mistral_format(aligned):
        raise UsageError(
            f"--mistral-format: --aligned {aligned.name} has no consolidated*.safetensors beside params.json"
        )
    sft_ckpt, aligned_ckpt = load_consolidated(sft, "sft"), load_consolidated(aligned, "aligned")
    pairing = pair_tensors(sft_ckpt, aligned_ckpt, out_code)
    shards = mirror_shards(pairing.tensors, [t.aligned.file.name for t in pairing.tensors])
    return WeightSet(sft_ckpt, aligned_ckpt, pairing, shards, MISTRAL_INDEX_FILE)


def _identical(sft: TensorSource, aligned: TensorSource, pairing: Pairing) -> bool:
    """Whether every paired tensor is equal on both sides, so that extrapolation would change nothing.

    Stops at the first difference, which for a real SFT -> aligned pair is in the first chunk read.
    """
    import torch  # torch loads on first use, not with the package

    changed = changed_tensors(sft, aligned)
    with sft, aligned:
        for t in pairing.tensors:
            if t.sft is None or changed is not None and t.name not in changed:
                continue
            if t.shared != t.numel:
                return False  # a grown vocabulary
            wide = compute_dtype(torch_dtype(t.sft.dtype), torch_dtype(t.aligned.dtype))
            for start, stop in blocks(t.shared, t.aligned.row_numel, CHUNK_ELEMENTS):
                if not torch.equal(
                    sft.flat(t.sft, start, stop).to(wide), aligned.flat(t.aligned, start, stop).to(wide)
                ):
                    return False
    return True


def check_device_name(name: str) -> None:
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"--device {name!r}: choose cpu, cuda or auto")


def device(name: str):  # torch.device, imported lazily
    import torch  # torch loads on first use, not with the package

    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu")
    return torch.device(name)
