"""Typed decode caches: one small pytree class per layout, each with its own write and read.

Axis legend: U scanned units, B rows, S slots per row, K kv heads, H head dim, NP pages in the pool, PS page
size, MP pages per row, R kv_lora_rank, O qk_rope_head_dim, T tokens written at once.

| class            | arrays (one layer)                                                | LAYOUT          |
| ---------------- | ----------------------------------------------------------------- | --------------- |
| ContiguousKV     | k, v [B, K, S, H]                                                 | contiguous      |
| QuantizedKV      | k, v int8 [B, K, S, H]; k_scale, v_scale float32 [B, K, S]        | quantized       |
| PagedKV          | k, v [NP, PS, K, H]; page_table [B, MP] while a step runs         | paged           |
| QuantizedPagedKV | k, v int8 [NP, PS, K, H]; k_scale, v_scale [NP, PS, K]; page_table | quantized_paged |
| LatentCache      | latent [B, S, R], k_rope [B, S, O] (MLA: layers/mla.py)           | latent          |

Contiguous K/V keep heads before slots so a decode step's two matmuls read the cache as it lies (batched
over B, K; with [B, S, K, H] XLA:CPU transposed the whole cache for every layer and step, 6x slower at 512
slots). Slot s of row b holds the token at position s of that row; sliding-window layers keep every slot and
mask by position. A paged pool's addressing is in kernels/paged.py; the page table is attached for one call
(`with_page_table`) and taken off again, so the stored pool is pages only. Quantized caches hold one float32
scale per token and head and dequantize on read (layers/quantizations.py). The layers call `write` and
`attend` (attention) or `write` and the latent arrays (MLA) and check LAYOUT, so a wrong cache for a layer
fails at trace time with a message naming both.

The whole model's cache is {stack name: per-unit cache} (a unit that groups layers, registry.Stack.sublayers,
has {sublayer: cache}), every array stacked on a leading unit axis U, the same with scan_layers true or
false; `per_layer` splits it into one cache per layer for the serving engine.
"""

# The layout mixins below read fields and flax.struct's `replace` that only the dataclasses they are mixed
# into define; pylint cannot see through that.
# pylint: disable=no-member

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from MaxText.config.derived import ModelConfig
from MaxText.config.errors import ConfigError
from MaxText.kernels import decode_attention, paged, paged_attention
from MaxText.layers.common import dtype_of
from MaxText.layers.quantizations import dequantize_kv, quantize_kv
from MaxText.models import registry


def _check_tokens(cache, k, token_shape) -> None:
    """Trace-time check that k [B, T, K, H] fits the cache's (K, H) per token."""
    if tuple(k.shape[2:]) != tuple(token_shape):
        raise ValueError(
            f"{type(cache).__name__} holds (kv heads, head dim) = {tuple(token_shape)} per token; the layer "
            f"writes {tuple(k.shape[2:])}: a cache built for another model"
        )


class _Contiguous:
    """Rows x slots storage [B, K, S, ...]: scatter at each row's positions."""

    def scatter(self, values: dict, positions):
        """Writes each array of values [B, T, K, ...] (named like the cache's fields) at slots positions [B, T]."""
        rows = jnp.arange(positions.shape[0])[:, None, None]
        heads = jnp.arange(self.k.shape[1])[None, :, None]
        index = (rows, heads, positions[:, None, :])  # -> [B, K, T], the values' axes 0, 2, 1
        return self.replace(
            **{
                name: getattr(self, name)
                .at[index]
                .set(jnp.swapaxes(x, 1, 2).astype(getattr(self, name).dtype))
                for name, x in values.items()
            }
        )

    def tokens(self) -> dict:
        """Every field as [B, S, K, ...] (slot-major), the form scatter takes: a prefix's K/V for insertion."""
        return {f.name: jnp.swapaxes(getattr(self, f.name), 1, 2) for f in dataclasses.fields(self)}

    def token_shape(self) -> tuple:
        return (self.k.shape[1], self.k.shape[3])

    def attend(self, q, positions, spec, dtype):
        """q [B, T, N, H] at positions [B, T] against the whole cache (spec.kernel: dot_product)."""
        k, v = self.read(dtype)
        return decode_attention(q, k, v, positions, spec)


class _Paged:
    """A pool of pages [NP, PS, K, ...] shared by all rows, addressed through page_table [B, MP]."""

    def scatter(self, values: dict, positions):
        """Writes values [B, T, K, ...] through the rows' pages at positions [B, T]."""
        if self.page_table is None:
            raise ValueError(f"{type(self).__name__}: writing needs the page table (with_page_table)")
        index = paged.page_slots(self.page_table, positions, self.k.shape[1])
        return self.replace(
            **{
                name: getattr(self, name).at[index].set(x.astype(getattr(self, name).dtype))
                for name, x in values.items()
            }
        )

    def token_shape(self) -> tuple:
        return tuple(self.k.shape[2:])

    def attend(self, q, positions, spec, dtype):
        """q [B, T, N, H] against the rows' pages (spec.kernel: paged | paged_reference)."""
        del dtype  # the kernels compute in q's dtype
        return paged_attention(q, self.k, self.v, self.page_table, positions, spec, *self.scales())


class _Float:
    def write(self, k, v, positions):
        """Scatters k/v [B, T, K, H] into slots positions [B, T] of each row."""
        _check_tokens(self, k, self.token_shape())
        return self.scatter({"k": k, "v": v}, positions)

    def scales(self) -> tuple:
        return ()


class _Int8:
    def write(self, k, v, positions):
        """Quantizes k/v [B, T, K, H] (one scale per token and head) and scatters them at positions [B, T]."""
        _check_tokens(self, k, self.token_shape())
        (kq, ks), (vq, vs) = quantize_kv(k), quantize_kv(v)
        return self.scatter({"k": kq, "v": vq, "k_scale": ks, "v_scale": vs}, positions)

    def scales(self) -> tuple:
        return (self.k_scale, self.v_scale)


@struct.dataclass
class ContiguousKV(_Float, _Contiguous):
    """k, v [B, K, S, H] in the activation dtype."""

    k: jax.Array
    v: jax.Array
    LAYOUT = "contiguous"

    def read(self, dtype):
        return self.k.astype(dtype), self.v.astype(dtype)


@struct.dataclass
class QuantizedKV(_Int8, _Contiguous):
    """k, v int8 [B, K, S, H] with k_scale, v_scale float32 [B, K, S]."""

    k: jax.Array
    v: jax.Array
    k_scale: jax.Array
    v_scale: jax.Array
    LAYOUT = "quantized"

    def read(self, dtype):
        return dequantize_kv(self.k, self.k_scale, dtype), dequantize_kv(self.v, self.v_scale, dtype)


@struct.dataclass
class PagedKV(_Float, _Paged):
    """k, v [NP, PS, K, H]; page_table [B, MP] (None in the stored pool)."""

    k: jax.Array
    v: jax.Array
    page_table: jax.Array = None
    LAYOUT = "paged"


@struct.dataclass
class QuantizedPagedKV(_Int8, _Paged):
    """k, v int8 [NP, PS, K, H], k_scale, v_scale float32 [NP, PS, K]; page_table [B, MP] or None."""

    k: jax.Array
    v: jax.Array
    k_scale: jax.Array
    v_scale: jax.Array
    page_table: jax.Array = None
    LAYOUT = "quantized_paged"


@struct.dataclass
class LatentCache:
    """MLA's compressed cache: latent [B, S, R] (the normalised c) and k_rope [B, S, O] (the rotated key)."""

    latent: jax.Array
    k_rope: jax.Array
    LAYOUT = "latent"

    def write(self, latent, k_rope, positions):
        """Scatters latent [B, T, R] and k_rope [B, T, O] into slots positions [B, T]."""
        want = (self.latent.shape[-1], self.k_rope.shape[-1])
        if (latent.shape[-1], k_rope.shape[-1]) != want:
            raise ValueError(
                f"LatentCache holds (kv_lora_rank, qk_rope_head_dim) = {want} per token; the layer writes "
                f"{(latent.shape[-1], k_rope.shape[-1])}: a cache built for another model"
            )
        rows = jnp.arange(latent.shape[0])[:, None]
        return self.replace(
            latent=self.latent.at[rows, positions].set(latent.astype(self.latent.dtype)),
            k_rope=self.k_rope.at[rows, positions].set(k_rope.astype(self.k_rope.dtype)),
        )


CACHE_TYPES = (ContiguousKV, QuantizedKV, PagedKV, QuantizedPagedKV, LatentCache)


def is_cache(x) -> bool:
    """A single layer's cache (the unit jax.tree.map stops at to work layer by layer)."""
    return isinstance(x, CACHE_TYPES)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> dict:
    """Zeroed cache for `batch` rows of `length` slots, in the model's activation dtype by default."""
    if cfg.quantize_kvcache:
        _require_kv(cfg, "quantize_kvcache=true", "quantized layout; expected quantize_kvcache=false")
    return _zeros(cfg, (batch, length), dtype, paged_pool=False)


def init_paged_cache(cfg: ModelConfig, num_pages: int, page_size: int, dtype=None) -> dict:
    """Zeroed pool of `num_pages` pages of `page_size` slots per layer (page 0 is the null page)."""
    _require_kv(cfg, "kv_cache='paged'", "paged kernel; expected kv_cache=contiguous")
    return _zeros(cfg, (num_pages, page_size), dtype, paged_pool=True)


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


def map_layers(fn, *trees):
    """fn(layer cache, *matching layer caches) for every layer of matching cache trees."""
    return jax.tree.map(fn, *trees, is_leaf=is_cache)


def with_page_table(pool: dict, page_table) -> dict:
    """The pool with page_table [B, MP] in every layer's cache (broadcast over the unit axis U of a stacked
    pool; as is for a per-layer one)."""

    def attach(layer):
        if layer.k.ndim == 5:  # stacked: [U, NP, PS, K, H]
            return layer.replace(
                page_table=jnp.broadcast_to(page_table, (layer.k.shape[0],) + page_table.shape)
            )
        return layer.replace(page_table=page_table)

    return map_layers(attach, pool)


def without_page_table(cache):
    """The pool alone: every layer's page_table removed (the inverse of with_page_table)."""
    return map_layers(lambda layer: layer.replace(page_table=None), cache)


def _per_token(cfg: ModelConfig, block) -> dict:
    """A block's per-token cache {name: shape}: it may declare its own (MLA keeps a compressed latent)."""
    declared = getattr(block, "cache_shapes", None)
    kv = (cfg.num_kv_heads, cfg.head_dim)
    return declared(cfg) if declared else {"k": kv, "v": kv}


def _cache_class(per_token: dict, quantized: bool, paged_pool: bool):
    if set(per_token) != {"k", "v"}:
        return LatentCache
    if paged_pool:
        return QuantizedPagedKV if quantized else PagedKV
    return QuantizedKV if quantized else ContiguousKV


def _zeros(cfg: ModelConfig, rows_slots: tuple, dtype, paged_pool: bool) -> dict:
    """A contiguous K/V cache is [U, B, K, S, H]; a pool [U, NP, PS, K, H]; a latent one [U, B, S, R]."""
    dtype = dtype or dtype_of(cfg.dtype)
    cache = {}
    for stack in registry.stacks(cfg):
        per_token = _per_token(cfg, stack.block)
        cls = _cache_class(per_token, cfg.quantize_kvcache, paged_pool)
        heads_major = cls in (ContiguousKV, QuantizedKV)

        def shape_of(token_shape, heads_major=heads_major, length=stack.length):
            if heads_major:  # token_shape (K, H) or (K,) for a scale
                return (length, rows_slots[0], token_shape[0], rows_slots[1], *token_shape[1:])
            return (length, *rows_slots, *token_shape)

        def layer_cache(per_token=per_token, shape_of=shape_of, cls=cls):
            if cls in (
                QuantizedKV,
                QuantizedPagedKV,
            ):  # int8 values, and one float32 scale per token and head
                kv = {name: jnp.zeros(shape_of(shape), jnp.int8) for name, shape in per_token.items()}
                scales = {f"{n}_scale": jnp.ones(shape_of(s[:-1]), jnp.float32) for n, s in per_token.items()}
                return cls(**kv, **scales)
            return cls(**{name: jnp.zeros(shape_of(shape), dtype) for name, shape in per_token.items()})

        if stack.sublayers:
            cache[stack.name] = {name: layer_cache() for name in stack.sublayers}
        else:
            cache[stack.name] = layer_cache()
    return cache
