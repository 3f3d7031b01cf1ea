"""The tests mirror the packages (tests/<package>/ for MaxText/<package>/, each a package) and share code
through one module, helpers.py: no test file imports another test file or conftest."""

import ast
import os

from MaxText import paths

TESTS = os.path.join(paths.REPO_ROOT, "MaxText", "tests")
SHARED = "MaxText.tests.helpers"


def _python_files():
    for dirpath, dirs, files in os.walk(TESTS):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def _tests_imports(path: str):
    """(line, module, name) of every import of a MaxText.tests module in a file (relative ones included)."""
    package = "MaxText." + os.path.relpath(os.path.dirname(path), os.path.dirname(TESTS)).replace(os.sep, ".")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("MaxText.tests"):
                    yield node.lineno, alias.name, ""
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            if module == "MaxText.tests":  # from MaxText.tests import helpers
                for alias in node.names:
                    yield node.lineno, f"MaxText.tests.{alias.name}", ""
            elif module.startswith("MaxText.tests."):
                for alias in node.names:
                    yield node.lineno, module, alias.name


def test_no_test_file_imports_another_test_file_or_conftest():
    bad = []
    for path in _python_files():
        rel = os.path.relpath(path, TESTS)
        for line, module, name in _tests_imports(path):
            if module != SHARED:
                bad.append(f"MaxText/tests/{rel}:{line} imports {module} {name}".rstrip())
    assert not bad


def test_test_directories_mirror_the_packages():
    maxtext = os.path.dirname(TESTS)
    bad = []
    for path in _python_files():
        directory = os.path.relpath(os.path.dirname(path), TESTS)
        if directory == ".":
            continue
        top = directory.split(os.sep)[0]
        if not os.path.isfile(os.path.join(maxtext, top, "__init__.py")):
            bad.append(f"MaxText/tests/{directory} has no package MaxText/{top}")
        if not os.path.isfile(os.path.join(TESTS, directory, "__init__.py")):
            bad.append(f"MaxText/tests/{directory} has no __init__.py (pytest --pyargs would miss it)")
    assert not sorted(set(bad))
