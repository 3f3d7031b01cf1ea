"""The contiguous KV cache: an explicit pytree passed into and returned from the model.

Layout: {stack name: per-unit cache} with every array stacked on a leading unit axis U (the stack's length).
A unit of one layer has the cache {"k": [U, B, S, K, H], "v": [U, B, S, K, H]}; a unit that groups several
layers (registry.Stack.sublayers, e.g. Gemma 2's ("local", "global")) has {sublayer: {"k": ..., "v": ...}}.
B batch slots, S cache length, K kv heads, H head dim. Slot s of row b holds the key/value of the token at
position s of that row; sliding-window layers keep every slot too and mask by position. The same layout
serves scan_layers true and false.
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

        def layer_cache(shape=shape):
            return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

        if stack.sublayers:
            cache[stack.name] = {name: layer_cache() for name in stack.sublayers}
        else:
            cache[stack.name] = layer_cache()
    return cache
