"""expo push: publish a finished output folder to the Hugging Face Hub in one commit.

Usage:
    expo push ./zephyr-expo me/zephyr-7b-expo --private
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import expo_cli

from . import _output as out
from ._options import CommitMessageOpt, CreatePrOpt, HubTarget, JsonOpt, PrivateOpt, QuietOpt, RevisionOpt, TokenOpt

PUSH_EXAMPLES = [
    "expo push ./zephyr-expo me/zephyr-7b-expo",
    "expo push ./zephyr-expo me/zephyr-7b-expo --revision alpha-0.3 --commit-message 'ExPO α=0.3'",
    "expo push ./zephyr-expo org/zephyr-7b-expo --create-pr",
]


def push(
    folder: Annotated[str, typer.Argument(metavar="FOLDER", help="The output folder of expo merge.")],
    repo_id: Annotated[
        str, typer.Argument(metavar="ORG/NAME", help="The Hub repo to upload to (org/name), created if needed.")
    ],
    private: PrivateOpt = False,
    revision: RevisionOpt = None,
    commit_message: CommitMessageOpt = None,
    create_pr: CreatePrOpt = False,
    token: TokenOpt = None,
    quiet: QuietOpt = False,
    json: JsonOpt = False,
) -> None:
    """Upload FOLDER to REPO_ID in one commit; print the commit URL. Run again to resume an interrupted upload."""
    url = upload(folder, HubTarget(repo_id, private, revision, commit_message, create_pr, token), quiet)
    if json:
        out.result_json({"folder": folder, "repo_id": repo_id, "commit_url": url})
    else:
        out.result(url)


def upload(folder: str | Path, hub: HubTarget, quiet: bool) -> str:
    """Push, saying so on stderr once the folder and repo are checked: shared by `expo push` and `--push-to-hub`
    of merge and tune."""
    return expo_cli.push(
        folder, hub.repo_id, token=hub.token, info=out.ignore if quiet else out.info, **hub.settings()
    )
