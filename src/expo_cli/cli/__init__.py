"""The `expo` command: a thin Typer shell over the library, with one place that turns errors into exit codes."""

from __future__ import annotations

import functools
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Annotated

import typer

from ..constants import VERSION
from ..errors import EXIT_CODES_HELP, ExpoError, Interrupted, exit_codes_help
from . import _output as out
from ._help import GroupedCommand
from .inspect import INSPECT_EXAMPLES, inspect
from .merge import MERGE_EXAMPLES, merge
from .push import PUSH_EXAMPLES, push
from .report import REPORT_EXAMPLES, report
from .tune import TUNE_EXAMPLES, tune
from .verify import VERIFY_EXAMPLES, verify

app = typer.Typer(
    name="expo",
    help="ExPO model extrapolation for LLM checkpoints: θ_expo = θ_aligned + α·(θ_aligned − θ_sft).",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)


def _epilog(examples: list[str], codes: str) -> str:
    """Examples kept on one line each (Click's \\b marker stops re-wrapping), then the command's exit codes."""
    return "\b\nExamples:\n" + "\n".join(f"  $ {e}" for e in examples) + "\n\n" + codes


def _quiet_hub(command: Callable[..., None]) -> Callable[..., None]:
    """--quiet silences huggingface_hub's own bars too (downloads, header parsing, uploads), for this command only."""

    @functools.wraps(command)
    def run(*args: object, **kwargs: object) -> None:
        from huggingface_hub.utils import (  # the Hub client loads when the Hub is used
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        if not kwargs.get("quiet") or are_progress_bars_disabled():
            return command(*args, **kwargs)
        disable_progress_bars()
        try:
            return command(*args, **kwargs)
        finally:
            enable_progress_bars()

    return run


UNEXPECTED = "an unexpected error (run again with --debug and report the traceback)"
COMMANDS = [  # (function, its line in `expo --help`, examples, the exit codes it can end with)
    (merge, "Write θ(α) as a new checkpoint (or a sweep of them), locally or to the Hub.", MERGE_EXAMPLES,
     exit_codes_help((0, 1, 2, 3, 4, 5, 6, 7, 130), UNEXPECTED)),
    (verify, "Check a merged checkpoint element by element against its inputs.", VERIFY_EXAMPLES,
     exit_codes_help((0, 1, 2, 3, 4, 7, 130), "a tensor or checksum differs (or an unexpected error)")),
    (inspect, "Show what alignment changed, per layer, and what survives rounding at α.", INSPECT_EXAMPLES,
     exit_codes_help((0, 1, 2, 3, 4, 5, 7, 130), UNEXPECTED)),
    (tune, "Choose α by generating and scoring answers; confirm it on held-out prompts.", TUNE_EXAMPLES,
     exit_codes_help((0, 1, 2, 3, 4, 5, 6, 7, 8, 130), UNEXPECTED)),
    (push, "Upload a merged checkpoint to the Hub in one commit.", PUSH_EXAMPLES,
     exit_codes_help((0, 1, 2, 3, 7, 130), UNEXPECTED)),
    (report, "Render a finished tune's HTML report again.", REPORT_EXAMPLES,
     exit_codes_help((0, 1, 2, 3, 5, 130), UNEXPECTED)),
]  # fmt: skip
for command, summary, examples, codes in COMMANDS:
    app.command(cls=GroupedCommand, short_help=summary, epilog=_epilog(examples, codes))(
        command if command is report else _quiet_hub(command)
    )

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        out.result(f"expo {VERSION}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks (or set EXPO_DEBUG=1).")] = False,
) -> None:
    _state["debug"] = debug or os.environ.get("EXPO_DEBUG", "") not in ("", "0")


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: user errors become one line on stderr and their documented exit code."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app(args=argv, prog_name="expo")
    except ExpoError as err:
        if _state["debug"]:
            traceback.print_exc()
        out.error(str(err))
        sys.exit(err.exit_code)
