"""Small shared pieces of the layers: dtype and precision lookups, and the logical-constraint helper."""

import flax.linen as nn
import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
PRECISIONS = {
    "default": jax.lax.Precision.DEFAULT,
    "high": jax.lax.Precision.HIGH,
    "highest": jax.lax.Precision.HIGHEST,
}


def dtype_of(name: str):
    return DTYPES[name]


def precision_of(name: str):
    return PRECISIONS[name]


def constrain(x, names):
    """Annotates an activation with logical axis names; a no-op outside a mesh + rules context."""
    return nn.with_logical_constraint(x, names)


def param_with_axes(module: nn.Module, name: str, init, shape, dtype, axes):
    """Declares a parameter whose logical axis names travel with it (for sharding)."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)
