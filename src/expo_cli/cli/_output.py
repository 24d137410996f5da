"""Where the CLI's words go: results on stdout, everything for the human on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any


def result(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


def result_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str), file=sys.stdout, flush=True)


def info(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ignore(text: str) -> None:
    """For messages that --quiet silences."""


def warning(text: str) -> None:
    print(f"Warning: {text}", file=sys.stderr, flush=True)


def error(text: str) -> None:
    print(f"Error: {text}", file=sys.stderr, flush=True)
