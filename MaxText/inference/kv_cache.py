"""The contiguous KV cache: an explicit pytree passed into and returned from the model.

Layout: {stack name: {"k": [L, B, S, K, H], "v": [L, B, S, K, H]}} where L is the stack's layer count,
B batch slots, S cache length, K kv heads and H head dim. Slot s of row b holds the key/value of the token
at position s of that row. The same layout serves scan_layers true and false.
"""

import jax.numpy as jnp

from MaxText.config.derived import ModelConfig
from MaxText.layers.common import dtype_of
from MaxText.models import registry


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> dict:
    """Zeroed cache for `batch` rows of `length` slots, in the model's activation dtype by default."""
    dtype = dtype or dtype_of(cfg.dtype)
    cache = {}
    for stack in registry.stacks(cfg):
        shape = (stack.length, batch, length, cfg.num_kv_heads, cfg.head_dim)
        cache[stack.name] = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
    return cache
