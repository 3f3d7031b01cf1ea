"""Multi-head latent attention's decode kernel: queries against the compressed latent cache (layers/mla.py).

Axis legend: B batch, T query length, S cache slots, N heads, R kv_lora_rank, P qk_nope_head_dim,
O qk_rope_head_dim, V v_head_dim.

Weight absorption: q_nope . k_nope = (q_nope . wkv_b_k) . c and out_v = (softmax . c) . wkv_b_v, so the
cache (c [B, S, R] and the rotated rope key [B, S, O]) is never expanded to per-head keys and values.
"""

import jax
import jax.numpy as jnp

from MaxText.kernels.masks import MASK_VALUE, allowed


def absorbed_attention(q_nope, q_rope, wkv_b, latent, k_rope, positions, scale: float, precision, dtype):
    """q_nope [B, T, N, P], q_rope [B, T, N, O] (rotated), wkv_b [R, N, P + V], latent [B, S, R] and
    k_rope [B, S, O] -> [B, T, N, V] in `dtype`. Slot j is visible to a query at position p when j <= p.
    Scores and softmax in float32."""
    p = q_nope.shape[-1]
    w = wkv_b.astype(dtype)
    latent, k_rope = latent.astype(dtype), k_rope.astype(dtype)
    hp = dict(precision=precision, preferred_element_type=jnp.float32)
    q_latent = jnp.einsum("btnp,rnp->btnr", q_nope, w[..., :p], **hp)
    scores = jnp.einsum("btnr,bsr->bnts", q_latent, latent, **hp)
    scores = scores + jnp.einsum("btno,bso->bnts", q_rope, k_rope, **hp)
    b, s = latent.shape[:2]
    slots = jnp.broadcast_to(jnp.arange(s, dtype=positions.dtype), (b, s))
    ok = allowed(positions, slots, jnp.ones_like(positions), jnp.ones_like(slots), 0)[:, 0]  # [B, 1, T, S]
    probs = jax.nn.softmax(jnp.where(ok, scores * scale, MASK_VALUE), axis=-1)
    out_latent = jnp.einsum("bnts,bsr->btnr", probs, latent.astype(jnp.float32), **hp)
    out = jnp.einsum("btnr,rnv->btnv", out_latent, w[..., p:].astype(jnp.float32), **hp)
    return out.astype(dtype)
