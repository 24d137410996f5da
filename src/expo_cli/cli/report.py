"""expo report: render the HTML report of a finished tune again, from its run folder or its --save-responses file.

Usage:
    expo report ~/.cache/expo/tune/3f2a9c1b0d4e5f67 -o report.html
"""

from __future__ import annotations

from typing import Annotated

import typer

import expo_cli

from . import _output as out

REPORT_EXAMPLES = [
    "expo report ./tune-run -o report.html",
    "expo report responses.jsonl -o report.html",
]


def report(
    source: Annotated[
        str,
        typer.Argument(
            metavar="RUN",
            help="A finished tune's run folder (--run-dir; the path --json prints under run.dir), or its "
            "--save-responses file (statistics recomputed).",
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", rich_help_panel="Output", metavar="FILE.html", help="Where the self-contained page goes."
        ),
    ],
) -> None:
    """Render a tune's report: curves, statistics and every answer side by side, one HTML file that works offline."""
    out.result(str(expo_cli.report(source, output)))
