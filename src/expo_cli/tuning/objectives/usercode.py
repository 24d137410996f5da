"""Loading a user's reward function (`module:function` or `path/to/file.py:function`), and finding the sources its
scores depend on: its module and every module it imports, directly or not, from the folder it was imported from.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from ...errors import InputError, UsageError


def import_root(source: Path, module: str) -> Path:
    """The folder a module was imported from: a file loaded by path is its own folder's; `a.b.c` in
    root/a/b/c.py (or root/a/b/c/__init__.py) is root."""
    if module.startswith("expo_reward_") or not module:
        return source.parent
    depth = module.count(".") + (source.name == "__init__.py")
    return source.parents[depth]


def local_sources(source: Path, root: Path) -> dict[str, bytes]:
    """The bytes of `source` and of every module it imports, directly or not, that lies in `root`, keyed by the
    path relative to `root` (never an absolute path)."""
    root = root.resolve()
    found: dict[str, bytes] = {}
    pending = [source.resolve()]
    while pending:
        file = pending.pop()
        name = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.name
        if name in found:
            continue
        found[name] = data = file.read_bytes()
        try:
            tree = ast.parse(data)
        except (SyntaxError, ValueError):
            continue
        for dotted, base in _imports(tree, file, root):
            parts = dotted.split(".") if dotted else []
            for end in range(1, len(parts) + 1):
                folder = base.joinpath(*parts[:end])
                for candidate in (folder.with_suffix(".py"), folder / "__init__.py"):
                    resolved = candidate.resolve()
                    if resolved.is_file() and resolved.is_relative_to(root):
                        pending.append(resolved)
    return found


def _imports(tree: ast.AST, file: Path, root: Path) -> list[tuple[str, Path]]:
    """(dotted module name, the folder it is relative to) for every import in `tree`; `from m import x` also
    names m.x, which may be a module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, root) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = root if node.level == 0 else file.parents[node.level - 1]
            module = node.module or ""
            found.append((module, base))
            found += [(f"{module}.{alias.name}".lstrip("."), base) for alias in node.names]
    return found


def load_function(spec: str, option: str = "--reward") -> Callable[[str, str], float]:
    """`package.module:function` (importable) or `path/to/file.py:function`."""
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"{option}-fn {spec!r}: write it as module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise InputError(f"{option}-fn {spec}: no such file {module_name}")
            loaded = importlib.util.spec_from_file_location(f"expo_reward_{path.stem}", path)
            assert loaded is not None and loaded.loader is not None
            module = importlib.util.module_from_spec(loaded)
            sys.modules[loaded.name] = module
            folder = str(path.resolve().parent)
            sys.path.insert(0, folder)  # the grader imports its own helpers as it would when run from its folder
            try:
                loaded.loader.exec_module(module)
            finally:
                sys.path.remove(folder)
        else:
            module = importlib.import_module(module_name)
    except InputError:
        raise
    except Exception as err:  # an import error in user code
        as_file = Path(*module_name.split(".")).with_suffix(".py")
        hint = (
            f"; to load the file {as_file.as_posix()}, write {as_file.as_posix()}:{attribute}"
            if isinstance(err, ModuleNotFoundError) and err.name == module_name.split(".")[0] and as_file.is_file()
            else ""
        )
        raise InputError(
            f"{option}-fn {spec}: cannot import {module_name} ({type(err).__name__}: {err}){hint}"
        ) from err
    function = getattr(module, attribute, None)
    if not callable(function):
        raise InputError(f"{option}-fn {spec}: {module_name} has no function {attribute!r}")
    return function
