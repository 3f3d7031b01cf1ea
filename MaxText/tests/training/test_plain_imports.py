"""A synthetic-data run needs only jax, flax, optax and orbax: the input formats' packages (grain,
tensorflow-datasets, pyarrow, datasets), the tokenizer libraries, the server's packages, tensorboardX and the
Hugging Face / torch stack are imported where a feature needs them, and a missing one is one line naming it.

The runs below are subprocesses whose import system refuses those packages (ModuleNotFoundError, as when they
are not installed)."""

import json
import os
import subprocess
import sys

import pytest

from MaxText import paths
from MaxText.config import ConfigError
from MaxText.config.errors import EXIT_CONFIG_ERROR, require
from MaxText.tests.helpers import BASE_YML, TINY

OPTIONAL = (
    "grain",
    "array_record",
    "tensorflow",
    "tensorflow_datasets",
    "datasets",
    "pyarrow",
    "sentencepiece",
    "tiktoken",
    "tokenizers",
    "safetensors",
    "transformers",
    "torch",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "prometheus_client",
    "jinja2",
    "tensorboardX",
)

# Runs `python3 -m MODULE ARGS...` with BLOCKED (comma-separated top-level names) unimportable.
BLOCKER = """
import importlib.abc, runpy, sys
blocked = set(sys.argv[1].split(","))

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked)", name=fullname)
        return None

sys.meta_path.insert(0, Blocker())
module, sys.argv = sys.argv[2], [sys.argv[2], *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _run_blocked(blocked, module: str, args) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")  # one CPU device: the fastest compile
    command = [sys.executable, "-c", BLOCKER, ",".join(blocked), module, *args]
    return subprocess.run(
        command, cwd=paths.REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_synthetic_training_runs_without_the_optional_packages(tmp_path):
    args = [BASE_YML, *TINY, "steps=2", f"base_output_directory={tmp_path}", "run_name=plain"]
    result = _run_blocked(OPTIONAL, "MaxText.train", args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained to step 2" in result.stdout
    # TensorBoard scalars are the one default-on feature that needs an optional package: one line says so.
    note = [line for line in result.stderr.splitlines() if "tensorboardX" in line]
    assert note == [
        "note: writing TensorBoard scalars needs the 'tensorboardX' package, not installed; "
        "pip install tensorboardX==2.6.5; writing metrics.jsonl only"
    ]
    with open(tmp_path / "plain" / "metrics.jsonl", encoding="utf-8") as f:
        assert [r["step"] for r in map(json.loads, f) if "loss" in r] == [1, 2]


def test_grain_data_without_grain_is_one_line_naming_the_package(tmp_path):
    args = [BASE_YML, *TINY, "dataset_type=grain", "grain_train_files=/nonexistent/*.array_record"]
    result = _run_blocked(
        ["grain"], "MaxText.train", [*args, f"base_output_directory={tmp_path}", "run_name=g"]
    )
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "config error: dataset_type='grain' needs the 'grain' package, not installed; pip install grain==0.2.18"
    )


def test_serve_without_fastapi_is_one_line_naming_the_package():
    result = _run_blocked(["fastapi"], "MaxText.serve", [BASE_YML, "load_parameters_path=/nonexistent"])
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "config error: MaxText.serve needs the 'fastapi' package, not installed; pip install fastapi==0.165.0"
    )


def test_require_names_only_a_missing_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # a None entry: `import` fails as if absent
    with pytest.raises(ConfigError, match=r"^x needs the 'tensorflow-datasets' package, not installed; pip install "
                       r"tensorflow-datasets==4\.9\.10; or y$"):  # fmt: skip
        require("tensorflow_datasets", "x", instead="y")
    assert require("json", "x").dumps(1) == "1"
    # A package that is installed but lacks one of its own dependencies is not "not installed": it raises as is.
    (tmp_path / "needs_a_dependency.py").write_text("import no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency"):
        require("needs_a_dependency", "x")
