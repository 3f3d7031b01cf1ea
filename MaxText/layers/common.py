"""Small shared pieces of the layers: dtype and precision lookups, and the logical-constraint helper."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from MaxText.config.choices import DType, Precision
from MaxText.parallel.logical import constrain  # pylint: disable=unused-import  # re-exported for the layers

DTYPES = {DType.FLOAT32: jnp.float32, DType.BFLOAT16: jnp.bfloat16, DType.FLOAT16: jnp.float16}
PRECISIONS = {
    Precision.DEFAULT: jax.lax.Precision.DEFAULT,
    Precision.HIGH: jax.lax.Precision.HIGH,
    Precision.HIGHEST: jax.lax.Precision.HIGHEST,
}


def dtype_of(name: str):
    return DTYPES[name]


def precision_of(name: str):
    return PRECISIONS[name]


def param_with_axes(module: nn.Module, name: str, init, shape, dtype, axes):
    """Declares a parameter whose logical axis names travel with it (for sharding)."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)
