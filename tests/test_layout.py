"""The layering contracts in pyproject.toml hold for the tree, and fail on an import that breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    config = ROOT / "pyproject.toml"
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"], capture_output=True, text=True, env=env
    )


def test_the_tree_keeps_every_contract():
    run = lint_imports(ROOT / "src")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        (
            "core/sources.py",
            "from ..merging import execution",
            "expo_cli.core is not allowed to import expo_cli.merging",
        ),
        ("tuning/decision/search.py", "from ...merging import planning", "Illegal imports of protected package"),
        (
            "tuning/decision/search.py",
            "from ..runs import runfolder",
            "expo_cli.tuning.decision is not allowed to import expo_cli.tuning.runs",
        ),
        ("cli/push.py", "from ..core import engine", "expo_cli.cli is not allowed to import expo_cli.core"),
    ],
)
def test_an_import_against_the_layers_fails_the_check(tmp_path, module, line, broken):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "expo_cli", src / "expo_cli", ignore=shutil.ignore_patterns("__pycache__"))
    target = src / "expo_cli" / module
    target.write_text(
        target.read_text().replace(
            "from __future__ import annotations\n", f"from __future__ import annotations\n{line}\n", 1
        )
    )
    run = lint_imports(src)
    assert run.returncode == 1 and broken in run.stdout, run.stdout + run.stderr
