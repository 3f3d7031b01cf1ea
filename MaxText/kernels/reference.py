"""Reference attention: materialises the [T, S] scores. The definition the other kernels are tested against."""

import jax
import jax.numpy as jnp

from MaxText.kernels.masks import MASK_VALUE, AttentionSpec, allowed, cap_scores


def dot_product_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, spec: AttentionSpec, kv_heads_major=False):
    """q [B, T, N, H], k/v [B, S, K, H] (kv_heads_major: [B, K, S, H], the KV cache's layout) ->
    [B, T, N, H]. Scores and softmax in float32."""
    b, t, n, h = q.shape
    kh = k.shape[1] if kv_heads_major else k.shape[2]
    kv = "bksh" if kv_heads_major else "bskh"
    qg = q.reshape(b, t, kh, n // kh, h)
    scores = jnp.einsum(
        f"btkgh,{kv}->bkgts", qg, k, precision=spec.precision, preferred_element_type=jnp.float32
    )
    scores = cap_scores(scores * spec.scale, spec.soft_cap)
    scores = jnp.where(allowed(q_pos, k_pos, q_seg, k_seg, spec.sliding_window), scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum(f"bkgts,{kv}->btkgh", probs.astype(v.dtype), v, precision=spec.precision)
    return out.reshape(b, t, n, h)
