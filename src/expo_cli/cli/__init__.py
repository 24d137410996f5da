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
from ..errors import EXIT_CODES_HELP, ExpoError, Interrupted
from . import _output as out
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


def _epilog(examples: list[str]) -> str:
    """Examples kept on one line each (Click's \\b marker stops re-wrapping), then the exit codes."""
    return "\b\nExamples:\n" + "\n".join(f"  $ {e}" for e in examples) + "\n\n" + EXIT_CODES_HELP


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


app.command(epilog=_epilog(MERGE_EXAMPLES))(_quiet_hub(merge))
app.command(epilog=_epilog(VERIFY_EXAMPLES))(_quiet_hub(verify))
app.command(epilog=_epilog(INSPECT_EXAMPLES))(_quiet_hub(inspect))
app.command(epilog=_epilog(TUNE_EXAMPLES))(_quiet_hub(tune))
app.command(epilog=_epilog(PUSH_EXAMPLES))(_quiet_hub(push))
app.command(epilog=_epilog(REPORT_EXAMPLES))(report)

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
