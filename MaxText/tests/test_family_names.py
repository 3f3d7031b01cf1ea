"""No model-name checks anywhere but the family's own module: a family's decoder_block name appears as a
string literal only in the module that registers its spec (and as base.yml's default in the declarations),
and every family module's specs are what the registry holds."""

import ast
import importlib
import os
import pkgutil

from MaxText import models, paths
from MaxText.models import registry

# The declaration of decoder_block names its default, the family base.yml trains.
ALLOWED = {("MaxText/config/schema.py", "llama2")}


def _string_literals(path: str):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def _family_modules() -> dict:
    """{decoder_block: path of the module that registers it}."""
    out = {}
    for info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"MaxText.models.{info.name}")
        for spec in getattr(module, "FAMILIES", ()):
            out[spec.name] = os.path.relpath(module.__file__, paths.REPO_ROOT)
    return out


def test_every_registered_family_comes_from_one_module():
    owners = _family_modules()
    assert sorted(owners) == registry.names()
    assert {"llama2", "mistral", "gemma3", "deepseek3", "gpt3"} <= set(owners)


def test_family_names_appear_only_in_their_own_module():
    owners = _family_modules()
    found = []
    root = os.path.join(paths.REPO_ROOT, "MaxText")
    for dirpath, _, files in os.walk(root):
        if os.path.relpath(dirpath, root).split(os.sep)[0] == "tests":
            continue
        for name in files:
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), paths.REPO_ROOT)
            for line, value in _string_literals(os.path.join(dirpath, name)):
                if value in owners and owners[value] != rel and (rel, value) not in ALLOWED:
                    found.append(f"{rel}:{line} names {value!r} (registered by {owners[value]})")
    assert found == []
