"""Resolving `--sft` and `--aligned`: local folders as they are, Hub repo ids validated from their headers first.

Shared by merge, verify and inspect. Everything that can be refused is refused before any weight is downloaded:
the same input twice, an output that is an input or exists, a different architecture, a pair that does not
match, a rule that matches nothing. Downloaded folders are then read like any local folder, at the commit whose
headers were validated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..alpha import AlphaRule, check_rules_match
from ..core.pairing import check_configs, pair_tensors
from ..core.sources import TensorSource
from ..errors import MismatchError, UsageError
from ..fsutil import check_apart, check_output, same_path
from . import hub, remote
from .adapters import Adapter, LoraSource, check_against, is_adapter, read_adapter
from .checkpoint import load_checkpoint
from .integrity import check_snapshot
from .stacking import same_model, stack_kind


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
        rules, out_code: checked against Hub headers before anything is downloaded (a local pair is planned by
            the caller).
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
    stack = Stack(sft_adapter, aligned_adapter, stack_kind(sft_adapter, aligned_adapter, str(sft), adapter_stack))
    if aligned_adapter and not sft_adapter and aligned_adapter.base_model and warn:
        if not same_model(aligned_adapter.base_model, str(sft)):
            warn(
                f"--aligned {aligned_adapter.path.name} was trained on {aligned_adapter.base_model} (its "
                f"adapter_config.json) but --sft is {sft}; make sure they are the same model"
            )
    specs = _full_models(str(sft), str(aligned), sft_revision, aligned_revision, stack, base)
    remote_ids = {role: hub.parse_input(spec, revision) for role, (spec, revision) in specs.items()}
    _check_distinct(str(sft), str(aligned), specs, remote_ids, stack)
    local = {role: Path(spec) for role, (spec, _) in specs.items() if remote_ids[role] is None}
    local.update({role: adapter.path for role, adapter in stack.adapters().items()})
    for output in outputs:
        check_apart(output, local)
        check_output(output, force)
    views = {role: _view(spec, remote_ids[role], role, token) for role, (spec, _) in specs.items()}
    pair = stack.wrap(views)
    check_configs(*pair, allow_architecture_mismatch)
    remote = {role: view for role, view in views.items() if isinstance(view, hub.RemoteCheckpoint)}
    if remote and all(source.tensors for source in pair):  # .bin repos have no headers to read remotely
        pairing = pair_tensors(*pair, out_code)
        check_rules_match(rules, [t.name for t in pairing.tensors if t.sft is not None])
    if not remote or not download:
        return pair
    paths = {
        role: hub.download(view, token, () if role == "base" else extra_patterns) for role, view in remote.items()
    }
    for output in outputs:  # the Hub cache may be anywhere: the output must not be inside it
        check_apart(output, paths)
    for role, path in paths.items():
        views[role] = load_checkpoint(path, role)
        check_snapshot(path, [f.name for f in views[role].weight_files], remote[role].listed)
    return stack.wrap(views)


@dataclass
class Stack:
    """Which inputs are PEFT adapters and what each stands on: the full models under them are "sft" (or "base"
    under an SFT adapter) and "aligned" (unless it is an adapter)."""

    sft: Adapter | None
    aligned: Adapter | None
    kind: str | None  # two adapters: "on-sft" or "continued"

    def adapters(self) -> dict[str, Adapter]:
        return {role: a for role, a in (("sft", self.sft), ("aligned", self.aligned)) if a is not None}

    def wrap(self, views: dict[str, TensorSource]) -> tuple[TensorSource, TensorSource]:
        """(sft, aligned) sources over the full models' views: each adapter served over what it stands on, and
        checked against it (once its headers are known: a Hub .bin model has none before the download)."""
        if self.sft is None:
            base = sft = views["sft"]
        else:
            base = views["base"]
            sft = _over(base, self.sft, "sft", f"--base {base.path.name}")
        if self.aligned is None:
            return sft, views["aligned"]
        if self.sft is None:
            under, label = sft, f"--sft {sft.path.name}"
        else:
            under, label = (sft, "--sft") if self.kind == "on-sft" else (base, "--base")
        return sft, _over(under, self.aligned, "aligned", label)


def _over(under: TensorSource, adapter: Adapter, role: str, label: str) -> LoraSource:
    if under.tensors:
        check_against(adapter, under, role, label)
    return LoraSource(under, adapter)


def _full_models(
    sft: str, aligned: str, sft_revision: str | None, aligned_revision: str | None, stack: Stack, base: str | None
) -> dict[str, tuple[str, str | None]]:
    """role -> (spec, revision) of every full checkpoint the pair stands on."""
    specs: dict[str, tuple[str, str | None]] = {}
    if stack.sft is None:
        specs["sft"] = (sft, sft_revision)
    else:
        base = base or stack.sft.base_model
        if base is None:
            raise UsageError(
                f"--sft {stack.sft.path.name} is a LoRA adapter whose config names no base model: pass --base"
            )
        specs["base"] = (base, None)
    if stack.aligned is None:
        specs["aligned"] = (aligned, aligned_revision)
    for role, (spec, revision) in specs.items():
        if revision and hub.parse_input(spec, revision) is None:
            raise UsageError(f"--{role}-revision: {spec} is a local folder, not a Hub repo id")
    return specs


def _check_distinct(
    sft: str,
    aligned: str,
    specs: dict[str, tuple[str, str | None]],
    remote_ids: dict[str, hub.HubInput | None],
    stack: Stack,
) -> None:
    """The same model twice is a mistake the user meant otherwise: refuse it before any work."""
    if stack.adapters():
        if Path(sft).exists() and Path(aligned).exists() and same_path(Path(sft), Path(aligned)):
            raise MismatchError(f"--sft and --aligned are both {sft}: pass the SFT model the adapter was trained from")
        return
    if remote_ids["sft"] is None and remote_ids["aligned"] is None:
        same = same_path(Path(specs["sft"][0]), Path(specs["aligned"][0]))
    else:
        same = remote_ids["sft"] is not None and remote_ids["sft"] == remote_ids["aligned"]
    if same:
        raise MismatchError(
            f"--sft and --aligned are both {sft}: pass the SFT checkpoint the aligned model was trained from"
        )


def _view(spec: str, remote_id: hub.HubInput | None, role: str, token: str | None) -> TensorSource:
    """A full checkpoint as far as it can be read before any download: a local folder (or, offline, the cached
    snapshot of a repo), else the repo's headers read by range requests."""
    if remote_id is None:
        return load_checkpoint(Path(spec), role)
    if hub.offline():
        checkpoint = load_checkpoint(hub.cached(remote_id), role)
        check_snapshot(checkpoint.path, [f.name for f in checkpoint.weight_files])
        return checkpoint
    return remote.fetch_headers(remote_id, role, token)


def _adapter(spec: str, revision: str | None, token: str | None, role: str) -> Adapter | None:
    """The PEFT adapter a spec names (a local folder, or a Hub repo downloaded whole: adapters are small), or None."""
    path = Path(spec)
    if path.is_dir():
        return read_adapter(path, role) if is_adapter(path) else None
    remote = hub.parse_input(spec, revision)
    folder = hub.adapter_snapshot(remote, token) if remote is not None else None
    return read_adapter(folder, role) if folder is not None else None
