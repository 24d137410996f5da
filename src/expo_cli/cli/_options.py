"""Options shared by several commands, defined once, and how their values become the library's options."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from ..alpha import parse_alphas
from ..errors import UsageError
from ..trajectory import alpha_for_step, parse_steps, parse_trajectory
from . import _output as out

CHECKPOINT = "FOLDER|ORG/NAME[@REV]"
SftOpt = Annotated[
    str | None,
    typer.Option(
        "--sft",
        rich_help_panel="Inputs",
        metavar=CHECKPOINT,
        help="The SFT checkpoint the aligned model was trained from (θ_sft): a local "
        "folder or a Hub repo id, or a LoRA adapter over --base. Required unless --aligned is a LoRA adapter whose "
        "config names its base model.",
    ),
]
AlignedOpt = Annotated[
    str | None,
    typer.Option(
        "--aligned",
        rich_help_panel="Inputs",
        metavar=CHECKPOINT,
        help="The aligned (DPO/RLHF) checkpoint (θ_aligned), or a PEFT LoRA adapter trained on --sft.",
    ),
]
TrajectoryOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--trajectory",
        rich_help_panel="Trajectory",
        metavar="STEP=CHECKPOINT",
        help="A checkpoint of the training run and the step it was saved at, earliest first (repeat the option; "
        "e.g. 0=./sft 10=org/run@step_10 20=org/run@step_20). Instead of --sft/--aligned: a least-squares line "
        "per weight through all of them, evaluated at --to-step (two checkpoints at steps 0 and 1 are ExPO with "
        "α = T − 1). Every checkpoint needs the same tensors and shapes.",
    ),
]
ToStepOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--to-step",
        rich_help_panel="Trajectory",
        metavar="STEP[,STEP...]",
        help="With --trajectory: the training step to extrapolate the line to, beyond the last checkpoint's. "
        "merge: several make a sweep, one checkpoint per step in OUTPUT/step-<STEP>, each checkpoint read once. "
        "tune: the candidate steps, instead of --alpha; its baseline (α = 0) is the line at the last "
        "checkpoint's step (with more than two checkpoints: the fit there, not that checkpoint).",
    ),
]
DeltaRankOpt = Annotated[
    int | None,
    typer.Option(
        "--delta-rank",
        rich_help_panel="Extrapolation",
        metavar="R",
        help="Replace each matrix's update (θ_aligned − θ_sft) by its best rank-R approximation before "
        "extrapolating (vectors unchanged); --json gives the share of each update's energy kept.",
    ),
]
PartsOpt = Annotated[
    int | None,
    typer.Option(
        "--parts",
        rich_help_panel="Job arrays",
        metavar="N",
        help="How many parts: for --part auto in a Kubernetes Indexed Job (and expo merge's --finish).",
    ),
]
BaseOpt = Annotated[
    str | None,
    typer.Option(
        "--base",
        rich_help_panel="Inputs",
        metavar=CHECKPOINT,
        help="When --sft is a LoRA adapter: its base model (default: the adapter config's base_model_name_or_path).",
    ),
]
AdapterStackOpt = Annotated[
    str | None,
    typer.Option(
        "--adapter-stack",
        rich_help_panel="Inputs",
        metavar="on-sft|continued",
        help="When both are adapters and their configs do not tell: "
        "on-sft (the aligned adapter was trained on the merged SFT model) or continued (it continued the SFT "
        "adapter; both are relative to --base).",
    ),
]
AlphaOpt = Annotated[
    list[str],
    typer.Option(
        "--alpha",
        rich_help_panel="Extrapolation",
        metavar="ALPHA[,ALPHA...]",
        help="The paper's α: 0 = aligned model unchanged, -1 = SFT model; 0.1-0.5 typical for fully trained "
        "models, 1-25 for under-trained ones. Several (0.1,0.3,0.5 or the option repeated): a sweep, one "
        "checkpoint per α in OUTPUT/alpha-<α>, each input read once.",
    ),
]
AlphaForOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--alpha-for",
        rich_help_panel="Extrapolation",
        metavar="REGEX=VALUE",
        help="Another α for tensors whose name matches REGEX (repeatable; first match wins), e.g. 'embed|lm_head=0'.",
    ),
]
IncludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--include",
        rich_help_panel="Extrapolation",
        metavar="REGEX",
        help="Extrapolate only matching tensors; the rest stay as aligned.",
    ),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude", rich_help_panel="Extrapolation", metavar="REGEX", help="Matching tensors stay as aligned (α = 0)."
    ),
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        rich_help_panel="Output",
        help="Validate everything and print the plan (sizes, shards, disk, memory); write nothing.",
    ),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        rich_help_panel="Extrapolation",
        metavar="DTYPE",
        help="bfloat16, float16 or float32 (or bf16, fp16, fp32) for every floating tensor (default: the aligned "
        "dtype).",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", rich_help_panel="Extrapolation", metavar="DEVICE", help="cpu, cuda or auto (CUDA when available)."
    ),
]
MaxShardSizeOpt = Annotated[
    str,
    typer.Option(
        "--max-shard-size",
        rich_help_panel="Output",
        metavar="SIZE",
        help="Largest output shard, decimal units (5GB, 500MB).",
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        rich_help_panel="Output",
        help="Replace an existing non-empty output folder; also write inputs that look identical or swapped.",
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar, formula or summary on stderr (warnings still show).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
StrictOpt = Annotated[
    bool,
    typer.Option("--strict", rich_help_panel="Inputs", help="Treat inf/NaN already present in an input as an error."),
]
AllowArchOpt = Annotated[
    bool,
    typer.Option(
        "--allow-architecture-mismatch",
        rich_help_panel="Inputs",
        help="Skip the config.json model_type/architectures check.",
    ),
]

SftRevisionOpt = Annotated[
    str | None,
    typer.Option(
        "--sft-revision",
        rich_help_panel="Inputs",
        metavar="REV",
        help="Branch, tag or commit when --sft is a Hub repo id.",
    ),
]
AlignedRevisionOpt = Annotated[
    str | None,
    typer.Option(
        "--aligned-revision",
        rich_help_panel="Inputs",
        metavar="REV",
        help="Branch, tag or commit when --aligned is a Hub repo id.",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        rich_help_panel="Hub",
        metavar="TOKEN",
        help="Hugging Face token (default: HF_TOKEN or the saved login).",
    ),
]
PrivateOpt = Annotated[bool, typer.Option("--private", rich_help_panel="Hub", help="Create the Hub repo as private.")]
RevisionOpt = Annotated[
    str | None,
    typer.Option("--revision", rich_help_panel="Hub", metavar="BRANCH", help="Branch to push to (created if needed)."),
]
CommitMessageOpt = Annotated[
    str | None,
    typer.Option("--commit-message", rich_help_panel="Hub", metavar="TEXT", help="Message of the Hub commit."),
]
CreatePrOpt = Annotated[
    bool, typer.Option("--create-pr", rich_help_panel="Hub", help="Open a pull request instead of committing.")
]
SftIdOpt = Annotated[
    str | None,
    typer.Option(
        "--sft-id",
        rich_help_panel="Output",
        metavar="ORG/NAME[@REV]",
        help="The Hub repo a local --sft folder came from (for the card's base_model).",
    ),
]
AlignedIdOpt = Annotated[
    str | None,
    typer.Option(
        "--aligned-id",
        rich_help_panel="Output",
        metavar="ORG/NAME[@REV]",
        help="The Hub repo a local --aligned folder came from (for the card's base_model).",
    ),
]
ModelNameOpt = Annotated[
    str | None,
    typer.Option(
        "--model-name",
        rich_help_panel="Output",
        metavar="NAME",
        help="The card's model_name and title (default: <aligned name>-expo).",
    ),
]
PushToHubOpt = Annotated[
    str | None,
    typer.Option(
        "--push-to-hub", rich_help_panel="Hub", metavar="ORG/NAME", help="Upload the finished output to this Hub repo."
    ),
]


def show_progress(quiet: bool) -> bool:
    """A progress bar unless --quiet or HF_HUB_DISABLE_PROGRESS_BARS says otherwise."""
    from huggingface_hub.utils import are_progress_bars_disabled  # the Hub client loads when the Hub is used

    return not quiet and not are_progress_bars_disabled()


def run_alphas(
    alpha: list[str] | None,
    aligned: str | None,
    sft: str | None,
    trajectory: list[str] | None,
    to_step: list[str] | None,
    *,
    default: Sequence[float] | None = None,
) -> list[float]:
    """The α of a merge or the candidates of a tune: --alpha's (else `default`), or with --trajectory the α that
    reach each --to-step (see `expo_cli.trajectory`)."""
    if not trajectory:
        if to_step:
            raise UsageError("--to-step needs --trajectory (STEP=CHECKPOINT for each checkpoint)")
        if aligned is None:
            raise UsageError("--aligned is required (or --trajectory)")
        return parse_alphas(alpha) if alpha or default is None else list(default)
    if alpha or aligned or sft:
        raise UsageError(
            "--trajectory names every checkpoint and --to-step the step: drop --sft, --aligned and --alpha"
        )
    steps = [m.step for m in parse_trajectory(trajectory)]
    if not to_step:
        raise UsageError("--to-step is required with --trajectory: the step to extrapolate the line to")
    return [alpha_for_step(steps, step) for step in parse_steps(to_step)]


def run_options(quiet: bool, **values: Any) -> dict[str, Any]:
    """`MergeOptions` keyword arguments from a command's flags: repeatable options defaulted to (), the progress bar
    and the informational messages silenced by --quiet (and HF_HUB_DISABLE_PROGRESS_BARS), warnings always shown."""
    repeatable = ("alpha_for", "include", "exclude", "copy", "skip")
    return {
        **{name: (value or ()) if name in repeatable else value for name, value in values.items()},
        "progress": show_progress(quiet),
        "warn": out.warning,
        "info": out.ignore if quiet else out.info,
    }


@dataclass(frozen=True)
class HubTarget:
    """--push-to-hub and the options that say how to publish there: one object for merge, tune and push."""

    repo_id: str
    private: bool = False
    revision: str | None = None
    commit_message: str | None = None
    create_pr: bool = False
    token: str | None = None

    @classmethod
    def of(
        cls,
        repo_id: str | None,
        private: bool,
        revision: str | None,
        commit_message: str | None,
        create_pr: bool,
        token: str | None,
    ) -> HubTarget | None:
        """The target a command's flags name, or None without --push-to-hub."""
        return cls(repo_id, private, revision, commit_message, create_pr, token) if repo_id else None

    def settings(self) -> dict[str, Any]:
        """How to publish, as keyword arguments of `expo_cli.push` and `expo_cli.merge_to_hub` (the token is
        passed with the merge options)."""
        return {
            "private": self.private,
            "revision": self.revision,
            "commit_message": self.commit_message,
            "create_pr": self.create_pr,
        }
