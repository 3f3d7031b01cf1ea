"""The contiguous KV cache: an explicit pytree passed into and returned from the model.

Layout: {stack name: per-unit cache} with every array stacked on a leading unit axis U (the stack's length).
A unit of one layer has the cache {"k": [U, B, K, S, H], "v": [U, B, K, S, H]} (heads before slots: see
layers/attention.py); a unit that groups several layers (registry.Stack.sublayers, e.g. Gemma 2's ("local",
"global")) has {sublayer: {"k": ..., "v": ...}}. B batch slots, S cache length, K kv heads, H head dim. Slot
s of row b holds the key/value of the token at position s of that row; sliding-window layers keep every slot too and mask by position. The same layout
serves scan_layers true and false. Blocks with another cache declare it with `cache_shapes(cfg)` (MLA:
{"latent": [U, B, S, R], "k_rope": [U, B, S, O]}, see layers/mla.py).

The paged cache has the same tree with each layer's {"k", "v"} a pool of pages [U, NP, PS, K, H] shared by
all rows (NP pages of PS slots; kernels/paged.py documents the addressing). The model reads a row's pages
through a page table [B, MP]; `with_page_table` puts it into every layer's dict for one call and
`without_page_table` takes it out again, so the stored cache is just the pool. Only K/V caches page.

quantize_kvcache=true (kv_quant_dtype=int8) stores "k"/"v" as int8 and adds "k_scale"/"v_scale" [U, B, K, S]
(paged: [U, NP, PS, K]) in float32, one scale per token and head: attention.write_cache quantizes, and
attention reads dequantize (layers/quantizations.py). Only K/V caches quantize.
"""

import jax
import jax.numpy as jnp

from MaxText.config.derived import ModelConfig
from MaxText.config.errors import ConfigError
from MaxText.layers.common import dtype_of
from MaxText.models import registry


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> dict:
    """Zeroed cache for `batch` rows of `length` slots, in the model's activation dtype by default."""
    if cfg.quantize_kvcache:
        _require_kv(cfg, "quantize_kvcache=true", "quantized layout; expected quantize_kvcache=false")
    return _zeros(cfg, (batch, length), dtype, heads_major=True)


def init_paged_cache(cfg: ModelConfig, num_pages: int, page_size: int, dtype=None) -> dict:
    """Zeroed pool of `num_pages` pages of `page_size` slots per layer (page 0 is the null page)."""
    _require_kv(cfg, "kv_cache='paged'", "paged kernel; expected kv_cache=contiguous")
    return _zeros(cfg, (num_pages, page_size), dtype, heads_major=False)


def _require_kv(cfg: ModelConfig, setting: str, lacks: str) -> None:
    latent = [s.name for s in registry.stacks(cfg) if set(_per_token(cfg, s.block)) != {"k", "v"}]
    if latent:
        raise ConfigError(
            f"{setting}: decoder_block={cfg.decoder_block!r} keeps a latent (not K/V) cache in "
            f"{', '.join(latent)}, which has no {lacks}"
        )


def per_layer(cache: dict) -> dict:
    """{stack: tree of [U, ...] arrays} -> {stack: [tree of unit 0, ..., tree of unit U - 1]}.

    The serving engine keeps its cache this way: its decoder runs the layers unrolled, and a per-layer cache
    lets each layer update its own donated arrays in place (a stacked one is sliced and stacked back, a
    copy of the whole cache every step)."""
    return {
        name: [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(jax.tree.leaves(tree)[0].shape[0])]
        for name, tree in cache.items()
    }


def with_page_table(pool: dict, page_table) -> dict:
    """The pool with page_table [B, MP] added to every layer's dict (broadcast over the unit axis U of a
    stacked pool; as is for a per-layer one)."""

    def attach(layer, stacked: bool):
        if isinstance(layer, list):
            return [attach(unit, False) for unit in layer]
        if "k" not in layer:  # a unit of several layers
            return {name: attach(sub, stacked) for name, sub in layer.items()}
        if not stacked:
            return {**layer, "page_table": page_table}
        units = layer["k"].shape[0]
        return {**layer, "page_table": jnp.broadcast_to(page_table, (units,) + page_table.shape)}

    return {name: attach(stack, True) for name, stack in pool.items()}


def without_page_table(cache):
    """The pool alone: every layer's page_table removed (the inverse of with_page_table)."""
    if isinstance(cache, list):
        return [without_page_table(unit) for unit in cache]
    if "k" in cache:
        return {name: x for name, x in cache.items() if name != "page_table"}
    return {name: without_page_table(sub) for name, sub in cache.items()}


def _per_token(cfg: ModelConfig, block) -> dict:
    """A block's per-token cache {name: shape}: it may declare its own (MLA keeps a compressed latent)."""
    declared = getattr(block, "cache_shapes", None)
    kv = (cfg.num_kv_heads, cfg.head_dim)
    return declared(cfg) if declared else {"k": kv, "v": kv}


def _zeros(cfg: ModelConfig, rows_slots: tuple, dtype, heads_major: bool) -> dict:
    """heads_major: a contiguous K/V cache's [.., B, K, S, H] (else [.., rows, slots, per-token shape])."""
    dtype = dtype or dtype_of(cfg.dtype)
    cache = {}
    for stack in registry.stacks(cfg):
        per_token = _per_token(cfg, stack.block)
        kv_heads_major = heads_major and set(per_token) == {"k", "v"}

        def shape_of(token_shape, per_token=per_token, kv_heads_major=kv_heads_major, length=stack.length):
            if kv_heads_major:  # token_shape (K, H) or (K,) for a scale
                return (length, rows_slots[0], token_shape[0], rows_slots[1], *token_shape[1:])
            return (length, *rows_slots, *token_shape)

        def layer_cache(per_token=per_token, shape_of=shape_of):
            if cfg.quantize_kvcache:  # int8 values, and one float32 scale per token and head
                kv = {name: jnp.zeros(shape_of(shape), jnp.int8) for name, shape in per_token.items()}
                return {
                    **kv,
                    **{f"{n}_scale": jnp.ones(shape_of(s[:-1]), jnp.float32) for n, s in per_token.items()},
                }
            return {name: jnp.zeros(shape_of(shape), dtype) for name, shape in per_token.items()}

        if stack.sublayers:
            cache[stack.name] = {name: layer_cache() for name in stack.sublayers}
        else:
            cache[stack.name] = layer_cache()
    return cache
