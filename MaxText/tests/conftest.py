"""Test session setup. Runs before JAX is imported: 8 fake CPU devices and the persistent compile cache."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/maxtext/jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

from MaxText import paths  # pylint: disable=wrong-import-position

BASE_YML = os.path.join(paths.REPO_ROOT, "configs", "base.yml")

# Small model + run settings shared by tests that train: fast to compile on 2 CPU cores.
TINY = [
    "model_name=test-tiny",
    "dataset_type=synthetic",
    "enable_checkpointing=false",
    "steps=3",
    "log_period=1",
    "eval_interval=0",
    "eval_steps=1",
    "max_target_length=32",
    "peak_tflops_per_device=1",
]


@pytest.fixture(scope="session")
def base_yml():
    return BASE_YML


@pytest.fixture(autouse=True, scope="session")
def _jax_cpu_devices():
    assert jax.device_count() == 8, "tests expect 8 fake CPU devices (XLA_FLAGS set before jax import)"
