"""How `--help` reads: plain text (greppable, never cut to the terminal's width), options grouped under the panel
each declares (`rich_help_panel`), every default written one way, arguments named by their metavar."""

from __future__ import annotations

import re
from typing import Any

from typer.core import TyperCommand

GENERAL = "General"  # the panel of options that declare none (--help, --quiet, --json): always last
ORDER = (  # what a command needs first comes first; a panel not listed follows these, before General
    "Inputs",
    "Prompts",
    "Objective",
    "Choice of α",
    "Extrapolation",
    "Trajectory",
    "Generation",
    "Output",
    "Hub",
    "Job arrays",
    "Run folder and reports",
    "Speed",
)
_TYPER_DEFAULT = re.compile(r"\s*\[default: ([^\]]*)\]$")


class GroupedCommand(TyperCommand):
    """A command whose help lists its options panel by panel (in `ORDER`), each in the order declared."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """`expo verify [OPTIONS] OUTPUT`: arguments by their metavar, not Typer's `{OUTPUT}`."""
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [_argument_name(param) for param in self.get_params(ctx) if _is_argument(param)]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments = [(_argument_name(p), p.help or "") for p in self.get_params(ctx) if _is_argument(p)]
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = None if _is_argument(param) else param.get_help_record(ctx)
            if record is not None:
                panel = getattr(param, "rich_help_panel", None) or GENERAL
                panels.setdefault(panel, []).append((record[0], one_default_style(record[1])))
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        order = [*ORDER, *(title for title in panels if title not in ORDER and title != GENERAL), GENERAL]
        for title in sorted(panels, key=order.index):
            with formatter.section(title):
                formatter.write_dl(panels[title])


def one_default_style(text: str) -> str:
    """Typer's `[default: X]` written as the hand-written defaults are: `(default: X)`."""
    return _TYPER_DEFAULT.sub(r" (default: \1)", text)


def _is_argument(param: Any) -> bool:
    return param.param_type_name == "argument"


def _argument_name(param: Any) -> str:
    return param.metavar or param.name.upper()
