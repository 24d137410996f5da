"""Resolving `--sft` and `--aligned`: local folders as they are, Hub repo ids validated from their headers first.

Shared by merge, verify and inspect. Everything that can be refused is refused before any weight is downloaded:
the same input twice, an output that is an input or exists, a different architecture, a pair that does not
match, a rule that matches nothing. Downloaded folders are then read like any local folder, at the commit whose
headers were validated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .alpha import AlphaRule, check_rules_match
from .checkpoint import load_checkpoint
from .errors import MismatchError, UsageError
from .output import check_apart, check_output, same_path
from .pairing import check_configs, plan_merge
from .sources import TensorSource


def resolve_inputs(sft: str | Path, aligned: str | Path, *, sft_revision: str | None = None,
                   aligned_revision: str | None = None, token: str | None = None,
                   allow_architecture_mismatch: bool = False, rules: Sequence[AlphaRule] = (),
                   out_code: str | None = None, outputs: Sequence[Path] = (), force: bool = False,
                   download: bool = True,
                   extra_patterns: Sequence[str] = ()) -> tuple[TensorSource, TensorSource]:  # fmt: skip
    """The two checkpoints, read and validated, configs checked against each other.

    Args:
        sft, aligned: local folders or Hub repo ids (`org/name[@revision]`); an existing local folder wins.
        outputs: folders a merge will write, refused here if they are inputs or exist without `force`.
        rules, out_code: checked against Hub headers before downloading (a local pair is planned by the caller).
        download: False (a dry run) keeps Hub inputs as header-only views: enough to plan, nothing to read.
        extra_patterns: more files to download with Hub weights (Mistral-format weights).
    """
    from . import hub

    specs = {"sft": (str(sft), sft_revision), "aligned": (str(aligned), aligned_revision)}
    remote_ids = {role: hub.parse_input(spec, revision) for role, (spec, revision) in specs.items()}
    for role, (spec, revision) in specs.items():
        if revision and remote_ids[role] is None:
            raise UsageError(f"--{role}-revision: {spec} is a local folder, not a Hub repo id")
    local = {role: Path(spec) for role, (spec, _) in specs.items() if remote_ids[role] is None}
    if (len(local) == 2 and same_path(local["sft"], local["aligned"])) or (
        not local and remote_ids["sft"] == remote_ids["aligned"]
    ):
        raise MismatchError(f"--sft and --aligned are both {specs['sft'][0]}: pass the SFT checkpoint the aligned "
                            "model was trained from")  # fmt: skip
    for output in outputs:
        check_apart(output, local)
        check_output(output, force)
    if not any(remote_ids.values()):
        pair = load_checkpoint(local["sft"], "sft"), load_checkpoint(local["aligned"], "aligned")
        check_configs(*pair, allow_architecture_mismatch)
        return pair
    from huggingface_hub import constants

    if constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE:
        paths = {role: hub.cached(r) if r else local[role] for role, r in remote_ids.items()}
        pair = load_checkpoint(paths["sft"], "sft"), load_checkpoint(paths["aligned"], "aligned")
        check_configs(*pair, allow_architecture_mismatch)
        return pair
    remote = {role: hub.fetch_headers(r, role, token) for role, r in remote_ids.items() if r}
    views = {role: remote.get(role) or load_checkpoint(local[role], role) for role in specs}
    check_configs(views["sft"], views["aligned"], allow_architecture_mismatch)
    if all(view.tensors for view in views.values()):  # .bin repos have no headers to read remotely
        pairs = plan_merge(views["sft"], views["aligned"], out_code)
        check_rules_match(rules, [t.name for t in pairs.tensors if t.sft is not None])
    if not download:
        return views["sft"], views["aligned"]
    paths = {role: hub.download(remote[role], token, extra_patterns) if role in remote else local[role]
             for role in specs}  # fmt: skip
    for output in outputs:  # the Hub cache may be anywhere: the output must not be inside it
        check_apart(output, {role: paths[role] for role in remote})
    return load_checkpoint(paths["sft"], "sft"), load_checkpoint(paths["aligned"], "aligned")
