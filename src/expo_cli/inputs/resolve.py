"""Resolving `--sft` and `--aligned`: local folders as they are, Hub repo ids validated from their headers first.

Shared by merge, verify and inspect. Everything that can be refused is refused before any weight is downloaded:
the same input twice, an output that is an input or exists, a different architecture, a pair that does not
match, a rule that matches nothing. Downloaded folders are then read like any local folder, at the commit whose
headers were validated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..alpha import AlphaRule, check_rules_match
from ..core.pairing import check_configs, pair_tensors
from ..core.sources import TensorSource
from ..errors import MismatchError, UsageError
from ..fsutil import check_apart, check_output, same_path
from . import hub
from .adapters import LoraSource, check_against, is_adapter, read_adapter
from .checkpoint import load_checkpoint

if TYPE_CHECKING:
    from .adapters import Adapter


def resolve_inputs(
    sft: str | Path | None,
    aligned: str | Path,
    *,
    sft_revision: str | None = None,
    aligned_revision: str | None = None,
    token: str | None = None,
    allow_architecture_mismatch: bool = False,
    rules: Sequence[AlphaRule] = (),
    out_code: str | None = None,
    outputs: Sequence[Path] = (),
    force: bool = False,
    download: bool = True,
    extra_patterns: Sequence[str] = (),
    base: str | None = None,
    adapter_stack: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[TensorSource, TensorSource]:
    """The two checkpoints, read and validated, configs checked against each other.

    Args:
        sft, aligned: local folders or Hub repo ids (`org/name[@revision]`); an existing local folder wins.
            Either may be a PEFT LoRA adapter (then served by `adapters.LoraSource` over its base); `sft` may be
            None when `aligned` is an adapter whose config names its base model.
        outputs: folders a merge will write, refused here if they are inputs or exist without `force`.
        rules, out_code: checked against Hub headers before downloading (a local pair is planned by the caller).
        download: False (a dry run) keeps Hub inputs as header-only views: enough to plan, nothing to read.
        extra_patterns: more files to download with Hub weights (Mistral-format weights).
        base: the base model of an `sft` adapter (default: its config's base_model_name_or_path).
        adapter_stack: for two adapters, "on-sft" (the aligned adapter was trained on the merged SFT model) or
            "continued" (both are relative to the base); default: told from their configs.
        warn: called with warnings (a base-model mismatch).
    """
    if adapter_stack not in (None, "on-sft", "continued"):
        raise UsageError(f"--adapter-stack {adapter_stack!r}: choose on-sft or continued")
    aligned_adapter = _adapter(str(aligned), aligned_revision, token, "aligned")
    if sft is None:
        if aligned_adapter is None or aligned_adapter.base_model is None:
            why = " (the adapter's config names no base model)" if aligned_adapter else ""
            raise UsageError(f"--sft is required{why}")
        sft = aligned_adapter.base_model
    sft_adapter = _adapter(str(sft), sft_revision, token, "sft")
    if aligned_adapter is None and sft_adapter is None:
        return _resolve_pair(
            sft,
            aligned,
            sft_revision=sft_revision,
            aligned_revision=aligned_revision,
            token=token,
            allow_architecture_mismatch=allow_architecture_mismatch,
            rules=rules,
            out_code=out_code,
            outputs=outputs,
            force=force,
            download=download,
            extra_patterns=extra_patterns,
        )

    if Path(str(sft)).exists() and Path(str(aligned)).exists() and same_path(Path(str(sft)), Path(str(aligned))):
        raise MismatchError(f"--sft and --aligned are both {sft}: pass the SFT model the adapter was trained from")
    for output in outputs:
        check_apart(output, {role: a.path for role, a in (("sft", sft_adapter), ("aligned", aligned_adapter)) if a})
        check_output(output, force)

    def full(spec: str, revision: str | None, role: str) -> TensorSource:
        return _resolve_one(spec, revision, role, token, download, outputs)

    if sft_adapter is None:
        sft_source = full(str(sft), sft_revision, "sft")
        base_source = sft_source
    else:
        base = base or sft_adapter.base_model
        if base is None:
            raise UsageError(
                f"--sft {sft_adapter.path.name} is a LoRA adapter whose config names no base model: pass --base"
            )
        base_source = full(base, None, "base")
        check_against(sft_adapter, base_source, "sft", f"--base {Path(base).name}")
        sft_source = LoraSource(base_source, sft_adapter)
    if aligned_adapter is None:
        aligned_source = full(str(aligned), aligned_revision, "aligned")
    else:
        if sft_adapter is None:
            under, label = sft_source, f"--sft {Path(str(sft)).name}"
            if aligned_adapter.base_model and not _same_model(aligned_adapter.base_model, str(sft)) and warn:
                warn(
                    f"--aligned {aligned_adapter.path.name} was trained on {aligned_adapter.base_model} (its "
                    f"adapter_config.json) but --sft is {sft}; make sure they are the same model"
                )
        else:
            stack = adapter_stack or _stack(aligned_adapter, sft_adapter, str(sft))
            under, label = (sft_source, "--sft") if stack == "on-sft" else (base_source, "--base")
        check_against(aligned_adapter, under, "aligned", label)
        aligned_source = LoraSource(under, aligned_adapter)
    check_configs(sft_source, aligned_source, allow_architecture_mismatch)
    return sft_source, aligned_source


def _adapter(spec: str, revision: str | None, token: str | None, role: str) -> Adapter | None:
    """The PEFT adapter a spec names (a local folder, or a Hub repo downloaded whole: adapters are small), or None."""
    path = Path(spec)
    if path.is_dir():
        return read_adapter(path, role) if is_adapter(path) else None
    remote = hub.parse_input(spec, revision)
    folder = hub.adapter_snapshot(remote, token) if remote is not None else None
    return read_adapter(folder, role) if folder is not None else None


def _same_model(declared: str, given: str) -> bool:
    """Whether a config's base_model_name_or_path and a --sft value name the same model (paths by folder name)."""
    return declared == given or Path(declared.rstrip("/")).name == Path(given.rstrip("/")).name


def _stack(aligned: Adapter, sft: Adapter, sft_spec: str) -> str:
    """How two adapters relate, from their configs: the aligned one names the SFT adapter as its base ("on-sft"),
    or both name the same base ("continued"); otherwise the user must say it."""
    if aligned.base_model and _same_model(aligned.base_model, sft_spec):
        return "on-sft"
    if aligned.base_model and sft.base_model and _same_model(aligned.base_model, sft.base_model):
        return "continued"
    raise UsageError(
        f"--aligned {aligned.path.name} and --sft {sft.path.name} are both adapters and their configs "
        "do not tell how: pass --adapter-stack on-sft (trained on the merged SFT model) or continued "
        "(it continued the SFT adapter; both relative to the base)"
    )


def _resolve_one(
    spec: str, revision: str | None, role: str, token: str | None, download: bool, outputs: Sequence[Path]
) -> TensorSource:
    """One full checkpoint: a local folder, or a Hub repo validated from its headers, then downloaded."""
    remote_id = hub.parse_input(spec, revision)
    if remote_id is None:
        ckpt = load_checkpoint(Path(spec), role)
        for output in outputs:
            check_apart(output, {role: ckpt.path})
        return ckpt
    if hub.offline():
        return load_checkpoint(hub.cached(remote_id), role)
    remote = hub.fetch_headers(remote_id, role, token)
    if not download:
        return remote
    path = hub.download(remote, token)
    for output in outputs:
        check_apart(output, {role: path})
    return load_checkpoint(path, role)


def _resolve_pair(
    sft: str | Path,
    aligned: str | Path,
    *,
    sft_revision: str | None,
    aligned_revision: str | None,
    token: str | None,
    allow_architecture_mismatch: bool,
    rules: Sequence[AlphaRule],
    out_code: str | None,
    outputs: Sequence[Path],
    force: bool,
    download: bool,
    extra_patterns: Sequence[str],
) -> tuple[TensorSource, TensorSource]:
    """Two full checkpoints, validated as a pair (from Hub headers before any download)."""
    specs = {"sft": (str(sft), sft_revision), "aligned": (str(aligned), aligned_revision)}
    remote_ids = {role: hub.parse_input(spec, revision) for role, (spec, revision) in specs.items()}
    for role, (spec, revision) in specs.items():
        if revision and remote_ids[role] is None:
            raise UsageError(f"--{role}-revision: {spec} is a local folder, not a Hub repo id")
    local = {role: Path(spec) for role, (spec, _) in specs.items() if remote_ids[role] is None}
    if (len(local) == 2 and same_path(local["sft"], local["aligned"])) or (
        not local and remote_ids["sft"] == remote_ids["aligned"]
    ):
        raise MismatchError(
            f"--sft and --aligned are both {specs['sft'][0]}: pass the SFT checkpoint the aligned "
            "model was trained from"
        )
    for output in outputs:
        check_apart(output, local)
        check_output(output, force)
    if not any(remote_ids.values()):
        pair = load_checkpoint(local["sft"], "sft"), load_checkpoint(local["aligned"], "aligned")
        check_configs(*pair, allow_architecture_mismatch)
        return pair
    if hub.offline():
        paths = {role: hub.cached(r) if r else local[role] for role, r in remote_ids.items()}
        pair = load_checkpoint(paths["sft"], "sft"), load_checkpoint(paths["aligned"], "aligned")
        check_configs(*pair, allow_architecture_mismatch)
        return pair
    remote = {role: hub.fetch_headers(r, role, token) for role, r in remote_ids.items() if r}
    views = {role: remote.get(role) or load_checkpoint(local[role], role) for role in specs}
    check_configs(views["sft"], views["aligned"], allow_architecture_mismatch)
    if all(view.tensors for view in views.values()):  # .bin repos have no headers to read remotely
        pairs = pair_tensors(views["sft"], views["aligned"], out_code)
        check_rules_match(rules, [t.name for t in pairs.tensors if t.sft is not None])
    if not download:
        return views["sft"], views["aligned"]
    paths = {
        role: hub.download(remote[role], token, extra_patterns) if role in remote else local[role] for role in specs
    }
    for output in outputs:  # the Hub cache may be anywhere: the output must not be inside it
        check_apart(output, {role: paths[role] for role in remote})
    return load_checkpoint(paths["sft"], "sft"), load_checkpoint(paths["aligned"], "aligned")
