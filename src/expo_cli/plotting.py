"""Figures for `--plot` (inspect, tune): matplotlib on the Agg backend, a PNG written atomically like any output."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .errors import OutputError, UsageError
from .fsutil import write_atomically


def pyplot(option: str = "--plot") -> Any:
    """matplotlib.pyplot without a display, or a UsageError naming the extra that brings it."""
    try:
        import matplotlib  # an optional extra, for --plot only

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # an optional extra, for --plot only
    except ImportError as err:
        raise UsageError(f"{option} needs matplotlib: pip install 'expo-cli[plot]'") from err
    return plt


def save_png(fig: Any, path: str | Path) -> None:
    """Render the figure, close it, and write the PNG through a temporary file beside `path`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    try:
        write_atomically(Path(path), buffer.getvalue())
    except OSError as err:
        raise OutputError(f"--plot {path}: cannot write it ({err.strerror})") from err
