"""Attention kernels behind one interface.

Axis legend: B batch, T query length, S key length, N query heads, K kv heads, G = N / K, H head dim.

`attention(q, k, v, q_pos, k_pos, q_seg, k_seg, spec)` with q [B, T, N, H], k/v [B, S, K, H], positions and
segment ids [B, T] / [B, S] returns [B, T, N, H]. Query i sees key j when both are in the same segment,
k_pos[j] <= q_pos[i], and (sliding window W > 0) q_pos[i] - k_pos[j] < W. Every kernel honours all of it or
refuses (splash: see kernels/splash.py). `decode_attention` and `paged_attention` are the decode step over a contiguous and a paged cache.
spec.kernel is the `attention` setting; kernels/select.py turns it into the kernel that runs.
"""

import jax.numpy as jnp

from MaxText.kernels import select
from MaxText.kernels.flash import flash_attention
from MaxText.kernels.flash_pallas import flash_attention_pallas
from MaxText.kernels.masks import AttentionSpec
from MaxText.kernels.paged import paged_attention_reference
from MaxText.kernels.paged_pallas import paged_attention_pallas
from MaxText.kernels.reference import dot_product_attention
from MaxText.kernels.splash import splash_attention

ATTENTION_CHOICES = select.ATTEND_KERNELS + select.TABLE_SETTINGS


def _flash(q, k, v, q_pos, k_pos, q_seg, k_seg, spec):
    """The Pallas kernel compiled through Triton on GPU; the blockwise pure-JAX version elsewhere."""
    if select.platform() == "gpu":
        return flash_attention_pallas(q, k, v, q_pos, k_pos, q_seg, k_seg, spec)
    return flash_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, spec)


KERNELS = {"dot_product": dot_product_attention, "flash": _flash, "splash": splash_attention}


def attention(q, k, v, q_pos, k_pos, q_seg, k_seg, spec: AttentionSpec):
    """Attention among tokens (train, prefill): dispatches spec.kernel through select.attend_kernel."""
    name = select.attend_kernel(spec.kernel, select.platform(), k.shape[1])
    return KERNELS[name](q, k, v, q_pos, k_pos, q_seg, k_seg, spec)


def decode_attention(q, k, v, q_pos, spec: AttentionSpec):
    """Decode step over a contiguous cache k/v [B, K, S, H] whose slot j holds position j: the reference
    kernel reads the cache in that layout (one query per row against a long cache: the efficient choice)."""
    b, s = k.shape[0], k.shape[2]
    slots = jnp.broadcast_to(jnp.arange(s, dtype=q_pos.dtype), (b, s))
    ones_q, ones_k = jnp.ones_like(q_pos), jnp.ones_like(slots)
    return dot_product_attention(q, k, v, q_pos, slots, ones_q, ones_k, spec, kv_heads_major=True)


def paged_attention(q, k_pages, v_pages, page_table, q_pos, spec: AttentionSpec, k_scale=None, v_scale=None):
    """Decode step over a paged cache (same contract as paged.paged_attention_reference).

    The Pallas kernel takes one query per row of float pages; a multi-token step (T > 1) or an int8 pool with
    scales (quantize_kvcache) uses the reference, which has the same definition and dequantizes after its
    gather."""
    on = select.platform()
    quantized = k_scale is not None
    if select.decode_kernel(spec.kernel, on, paged=True) == "paged" and q.shape[1] == 1 and not quantized:
        return paged_attention_pallas(q, k_pages, v_pages, page_table, q_pos, spec, interpret=on != "gpu")
    return paged_attention_reference(q, k_pages, v_pages, page_table, q_pos, spec, k_scale, v_scale)


__all__ = [
    "ATTENTION_CHOICES",
    "AttentionSpec",
    "KERNELS",
    "attention",
    "decode_attention",
    "dot_product_attention",
    "flash_attention",
    "flash_attention_pallas",
    "paged_attention",
    "splash_attention",
]
