"""The import graph points down only (DESIGN.md's layout): no module imports a package above its own, and
inference never imports training. Every import counts, including those inside functions."""

import ast
import os

from MaxText import paths

# Higher numbers sit above lower ones; a package may import its own modules and any lower package. Top-level
# modules (the entry points, api) are above everything.
RANKS = {
    "paths": -1,
    "config": 0,
    "checkpoint": 1,
    "input_pipeline": 1,
    "parallel": 1,
    "kernels": 2,
    "layers": 3,
    "models": 4,
    "training": 5,
    "inference": 5,
    "conversion": 6,
    "post_training": 7,
}
TOP = 10


def _package(module: str) -> str | None:
    """The package of a MaxText module name ("MaxText.layers.mla" -> "layers"; top-level -> "")."""
    parts = module.split(".")
    if parts[0] != "MaxText":
        return None
    if len(parts) == 1:
        return ""
    return parts[1] if parts[1] in RANKS or parts[1] == "tests" else ""


def _imports(path: str):
    """(line, imported MaxText module) of every import in a file."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}" if node.module == "MaxText" else node.module


def upward_imports() -> list:
    root = os.path.join(paths.REPO_ROOT, "MaxText")
    bad = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, paths.REPO_ROOT)
            own = _package(rel[:-3].replace(os.sep, "."))
            if own == "tests":
                continue
            own_rank = RANKS.get(own, TOP)
            for line, module in _imports(path):
                target = _package(module)
                if target is None or target == own or target == "tests":
                    continue
                rank = RANKS.get(target, TOP)
                if rank > own_rank or (rank == own_rank and own != target):
                    bad.append(f"{rel}:{line} ({own or 'top'}) imports {module} ({target or 'top'})")
    return bad


def test_no_import_points_upward():
    assert upward_imports() == []
