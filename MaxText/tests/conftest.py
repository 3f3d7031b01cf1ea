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

from MaxText.tests.helpers import BASE_YML  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def base_yml():
    return BASE_YML


@pytest.fixture(autouse=True, scope="session")
def _jax_cpu_devices():
    assert jax.device_count() == 8, "tests expect 8 fake CPU devices (XLA_FLAGS set before jax import)"
