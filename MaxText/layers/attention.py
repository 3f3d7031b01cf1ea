"""Multi-head attention with GQA/MQA, RoPE, sliding windows and an explicit KV cache.

Axis legend: B batch, T query length, S key length (cache length when decoding), N query heads,
K kv heads, G = N / K, H head dim, D model dim.

Modes (an argument, never stored state):
- "train":          attend within the T tokens; no cache.
- "prefill":        attend within the T prompt tokens and write their K/V into `cache` at slots = positions.
- "autoregressive": write the T new tokens' K/V at slots = positions, then attend over the whole cache;
                    slot j is visible to a query at position p when j <= p (and p - j < W with a window).
The cache for one layer is {"k": [B, K, S, H], "v": [B, K, S, H]}, heads before slots so that a decode
step's two attention matmuls read it as it lies (batched over B, K; with [B, S, K, H] XLA:CPU transposed the
whole cache for every layer and step, 6x slower at 512 slots); it is returned, never mutated in place.
A paged cache (inference/kv_cache.py) is {"k": [NP, PS, K, H], "v": ..., "page_table": [B, MP]} instead:
the same modes write through the row's page table and decode reads through it (kernels/paged.py).
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from MaxText import kernels
from MaxText.kernels import paged
from MaxText.layers.common import constrain
from MaxText.layers.embeddings import RopeConfig, apply_rope
from MaxText.layers.linears import DenseGeneral
from MaxText.layers.normalizations import RMSNorm
from MaxText.layers.quantizations import QuantConfig, dequantize_kv, quantize_kv

MODES = ("train", "prefill", "autoregressive")


def scatter_tokens(cache: dict, values: dict, positions) -> dict:
    """Writes each per-token array of `values` ([B, T, K, ...], keyed like the cache) at slots `positions`
    [B, T] of each row: into [B, K, S, ...] of a contiguous cache, or through the rows' pages into the
    [NP, PS, K, ...] pool of a paged one."""
    if "page_table" in cache:
        index = paged.page_slots(cache["page_table"], positions, cache["k"].shape[1])
        return {
            **cache,
            **{name: cache[name].at[index].set(x.astype(cache[name].dtype)) for name, x in values.items()},
        }
    rows = jnp.arange(positions.shape[0])[:, None, None]
    heads = jnp.arange(cache["k"].shape[1])[None, :, None]
    index = (rows, heads, positions[:, None, :])  # -> [B, K, T], the values' axes 0, 2, 1
    return {
        **cache,
        **{
            name: cache[name].at[index].set(jnp.swapaxes(x, 1, 2).astype(cache[name].dtype))
            for name, x in values.items()
        },
    }


def write_cache(cache: dict, k, v, positions) -> dict:
    """Scatters k/v [B, T, K, H] into cache slots `positions` [B, T] of each row (through its pages when
    the cache is paged). A quantized cache (with k_scale/v_scale [.., K]) stores int8 and one scale per
    token and head."""
    values = {"k": k, "v": v}
    if "k_scale" in cache:
        (values["k"], values["k_scale"]), (values["v"], values["v_scale"]) = quantize_kv(k), quantize_kv(v)
    return scatter_tokens(cache, values, positions)


def read_cache(cache: dict, name: str, dtype):
    """The cache's "k" or "v" in `dtype`, dequantized when the cache holds int8 and scales."""
    if f"{name}_scale" in cache:
        return dequantize_kv(cache[name], cache[f"{name}_scale"], dtype)
    return cache[name].astype(dtype)


class Attention(nn.Module):
    """Self-attention. Parameters: query [D, N, H], key/value [D, K, H], out [N, H, D] (plus biases [N, H],
    [K, H], [D] with use_bias, and query_norm/key_norm scales [H] with qk_norm).

    scale defaults to 1/sqrt(H); it is applied to the scores, never folded into the weights.
    qk_norm: RMSNorm over H of each query and key head before RoPE, computing x_hat * (qk_norm_offset + w).
    """

    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    rope: Optional[RopeConfig]
    kernel: str = "dot_product"
    scale: Optional[float] = None
    sliding_window: int = 0
    soft_cap: float = 0.0
    block_size: int = 128
    use_bias: bool = False
    qk_norm: bool = False
    qk_norm_epsilon: float = 1e-6
    qk_norm_offset: float = 0.0
    dtype: jnp.dtype = jnp.float32
    weight_dtype: jnp.dtype = jnp.float32
    precision: jax.lax.Precision = jax.lax.Precision.DEFAULT
    quant: QuantConfig = QuantConfig()

    def _spec(self, kernel):
        scale = self.scale if self.scale is not None else self.head_dim**-0.5
        return kernels.AttentionSpec(
            kernel=kernel,
            scale=scale,
            sliding_window=self.sliding_window,
            soft_cap=self.soft_cap,
            precision=self.precision,
            block_size=self.block_size,
        )

    @nn.compact
    def __call__(self, x, positions, segment_ids, mode: str, cache: Optional[dict] = None):
        """x [B, T, D], positions/segment_ids [B, T] -> (out [B, T, D], new cache or None)."""
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {MODES}")
        dense = dict(
            dtype=self.dtype, weight_dtype=self.weight_dtype, precision=self.precision, use_bias=self.use_bias
        )
        dense["quant"] = self.quant
        n, kh, h = self.num_query_heads, self.num_kv_heads, self.head_dim
        q = DenseGeneral((n, h), kernel_axes=("embed", "q_heads", "kv"), name="query", **dense)(x)
        k = DenseGeneral((kh, h), kernel_axes=("embed", "kv_heads", "kv"), name="key", **dense)(x)
        v = DenseGeneral((kh, h), kernel_axes=("embed", "kv_heads", "kv"), name="value", **dense)(x)
        q, k, v = (
            checkpoint_name(q, "query_proj"),
            checkpoint_name(k, "key_proj"),
            checkpoint_name(v, "value_proj"),
        )
        if self.qk_norm:
            norm = dict(
                epsilon=self.qk_norm_epsilon,
                scale_offset=self.qk_norm_offset,
                dtype=self.dtype,
                weight_dtype=self.weight_dtype,
            )
            q = RMSNorm(name="query_norm", **norm)(q)
            k = RMSNorm(name="key_norm", **norm)(k)
        if self.rope is not None:
            q, k = apply_rope(q, positions, self.rope), apply_rope(k, positions, self.rope)
        q = constrain(q, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
        k = constrain(k, ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv"))
        v = constrain(v, ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv"))

        new_cache = None
        if mode == "train":
            out = kernels.attention(
                q, k, v, positions, positions, segment_ids, segment_ids, self._spec(self.kernel)
            )
        elif mode == "prefill":
            new_cache = write_cache(cache, k, v, positions)
            out = kernels.attention(
                q, k, v, positions, positions, segment_ids, segment_ids, self._spec(self.kernel)
            )
        elif "page_table" in cache:
            new_cache = write_cache(cache, k, v, positions)
            out = kernels.paged_attention(
                q, new_cache["k"], new_cache["v"], new_cache["page_table"], positions, self._spec(self.kernel),
                new_cache.get("k_scale"), new_cache.get("v_scale"),
            )  # fmt: skip
        else:
            new_cache = write_cache(cache, k, v, positions)
            out = kernels.decode_attention(
                q, read_cache(new_cache, "k", self.dtype), read_cache(new_cache, "v", self.dtype), positions,
                self._spec("dot_product"),
            )  # fmt: skip
        out = checkpoint_name(
            constrain(out, ("activation_batch", "activation_length", "activation_heads", "activation_kv")),
            "context",
        )
        out = DenseGeneral(
            x.shape[-1], axis=(-2, -1), kernel_axes=("heads", "kv", "embed"), name="out", **dense
        )(out)
        return checkpoint_name(out, "out_proj"), new_cache
