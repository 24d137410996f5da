"""Text split into lines as the files expo reads and writes are made: on "\\n" only.

`str.splitlines` also splits on U+2028, U+2029, \\x0b, \\x0c, \\x1c-\\x1e and \\x85, which a JSON string written with
`ensure_ascii=False` and a prompt may hold: a JSON-lines record would be cut in two, and so would a prompt. Every
line reader of the package goes through here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def split_lines(text: str) -> list[tuple[int, str]]:
    """(line number from 1, line) of every line that is not blank, split on "\\n" only; a "\\r" ending a line (a file
    written on Windows) is dropped with it."""
    return [
        (number, line.removesuffix("\r")) for number, line in enumerate(text.split("\n"), 1) if line.strip(" \t\r")
    ]


def json_lines(text: str, error: Callable[[int, str], Exception]) -> list[tuple[int, Any]]:
    """(line number, value) of every line of a JSON-lines text; a line that is not JSON raises `error(number, why)`."""
    records = []
    for number, line in split_lines(text):
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise error(number, err.msg) from err
    return records
