"""The contiguous KV cache: an explicit pytree passed into and returned from the model.

Layout: {stack name: per-unit cache} with every array stacked on a leading unit axis U (the stack's length).
A unit of one layer has the cache {"k": [U, B, S, K, H], "v": [U, B, S, K, H]}; a unit that groups several
layers (registry.Stack.sublayers, e.g. Gemma 2's ("local", "global")) has {sublayer: {"k": ..., "v": ...}}.
B batch slots, S cache length, K kv heads, H head dim. Slot s of row b holds the key/value of the token at
position s of that row; sliding-window layers keep every slot too and mask by position. The same layout
serves scan_layers true and false. Blocks with another cache declare it with `cache_shapes(cfg)` (MLA:
{"latent": [U, B, S, R], "k_rope": [U, B, S, O]}, see layers/mla.py).
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
        # A block may declare its own per-token cache (MLA keeps a compressed latent); the default is K/V.
        declared = getattr(stack.block, "cache_shapes", None)
        kv = (cfg.num_kv_heads, cfg.head_dim)
        per_token = declared(cfg) if declared else {"k": kv, "v": kv}

        def layer_cache(per_token=per_token, prefix=(stack.length, batch, length)):
            return {name: jnp.zeros(prefix + shape, dtype) for name, shape in per_token.items()}

        if stack.sublayers:
            cache[stack.name] = {name: layer_cache() for name in stack.sublayers}
        else:
            cache[stack.name] = layer_cache()
    return cache
