"""Multi-head latent attention (DeepSeek V2/V3) with a compressed-latent decode cache.

Axis legend: B batch, T query length, S key length (cache length when decoding), N heads, D model dim,
Q q_lora_rank, R kv_lora_rank, P qk_nope_head_dim, O qk_rope_head_dim, V v_head_dim.

    q     = wq_b(q_norm(wq_a(x)))  [B, T, N, P + O]   (or query(x) when q_lora_rank = 0)
    c, kr = wkv_a(x)               [B, T, R], [B, T, O]  (kr: one rope key shared by all heads)
    c     = kv_norm(c);  k_nope, v = wkv_b(c)  [B, T, N, P], [B, T, N, V]
    score = (q_nope . k_nope + rope(q_rope) . rope(kr)) x scale;  out = out(softmax(score) . v)
scale is (P + O)^-0.5, times yarn_mscale(factor, mscale_all_dim)^2 under YaRN; nothing is folded into weights.

Decode cache: {"latent": [B, S, R], "k_rope": [B, S, O]}, the normalised latent c and the rotated rope key
of every token, i.e. (R + O) values per token and layer instead of N x (P + O + V) for full keys and values
(576 vs 40,960 for DeepSeek V3: 71x less memory and memory traffic per decoded token). Decoding attends in
the latent space by absorbing wkv_b into the query and the output ("weight absorption"):
    q_nope . k_nope = (q_nope . wkv_b_k) . c,    out_v = (softmax . c) . wkv_b_v,
so the cache is never expanded to per-head keys and values. Train and prefill expand them once (the
standard attention kernels then apply, with V zero-padded to P + O when the sizes differ).
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from MaxText import kernels
from MaxText.kernels.masks import MASK_VALUE, allowed
from MaxText.layers.attention import MODES
from MaxText.layers.common import constrain
from MaxText.layers.embeddings import RopeConfig, apply_rope
from MaxText.layers.linears import DenseGeneral
from MaxText.layers.normalizations import RMSNorm
from MaxText.layers.quantizations import QuantConfig, dequantize


def write_latent_cache(cache: dict, latent, k_rope, positions) -> dict:
    """Scatters latent [B, T, R] and k_rope [B, T, O] into cache slots `positions` [B, T]."""
    rows = jnp.arange(latent.shape[0])[:, None]
    return {
        "latent": cache["latent"].at[rows, positions].set(latent.astype(cache["latent"].dtype)),
        "k_rope": cache["k_rope"].at[rows, positions].set(k_rope.astype(cache["k_rope"].dtype)),
    }


class MLA(nn.Module):
    """Multi-head latent attention (see the module docstring). Parameters: wq_a [D, Q], q_norm [Q],
    wq_b [Q, N, P + O] (or query [D, N, P + O]), wkv_a [D, R + O], kv_norm [R], wkv_b [R, N, P + V],
    out [N, V, D]."""

    num_heads: int
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rope: RopeConfig
    scale: float
    kernel: str = "dot_product"
    block_size: int = 128
    norm_epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    weight_dtype: jnp.dtype = jnp.float32
    precision: jax.lax.Precision = jax.lax.Precision.DEFAULT
    quant: QuantConfig = QuantConfig()

    def _dense(self, features, axes, name, axis=-1):
        return DenseGeneral(
            features,
            axis=axis,
            kernel_axes=axes,
            dtype=self.dtype,
            weight_dtype=self.weight_dtype,
            precision=self.precision,
            quant=self.quant,
            name=name,
        )

    def _norm(self, name):
        return RMSNorm(epsilon=self.norm_epsilon, dtype=self.dtype, weight_dtype=self.weight_dtype, name=name)

    def _query(self, x):
        n, qk = self.num_heads, self.qk_nope_head_dim + self.qk_rope_head_dim
        if self.q_lora_rank == 0:
            return self._dense((n, qk), ("embed", "q_heads", "kv"), "query")(x)
        q = self._norm("q_norm")(self._dense(self.q_lora_rank, ("embed", "q_lora"), "wq_a")(x))
        return self._dense((n, qk), ("q_lora", "q_heads", "kv"), "wq_b")(q)

    @nn.compact
    def __call__(self, x, positions, segment_ids, mode: str, cache: Optional[dict] = None):
        """x [B, T, D], positions/segment_ids [B, T] -> (out [B, T, D], new cache or None)."""
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {MODES}")
        n, p, o, r, v_dim = (
            self.num_heads, self.qk_nope_head_dim, self.qk_rope_head_dim, self.kv_lora_rank, self.v_head_dim
        )  # fmt: skip
        q = checkpoint_name(self._query(x), "query_proj")
        q_nope, q_rope = q[..., :p], apply_rope(q[..., p:], positions, self.rope)
        kv = checkpoint_name(self._dense(r + o, ("embed", "kv_lora"), "wkv_a")(x), "key_proj")
        latent = self._norm("kv_norm")(kv[..., :r])
        k_rope = apply_rope(kv[..., None, r:], positions, self.rope)[:, :, 0]  # [B, T, O]
        wkv_b = self._dense((n, p + v_dim), ("kv_lora", "heads", "kv"), "wkv_b")
        new_cache = None
        if mode == "autoregressive":
            new_cache = write_latent_cache(cache, latent, k_rope, positions)
            wkv_b(latent[:, :0])  # binds (and at init creates) the kernel; no tokens expanded
            kernel = wkv_b.variables["params"]["kernel"]
            if self.quant.stored:  # absorbed into the query in float: dequantize the stored int8 kernel
                kernel = dequantize(kernel, wkv_b.variables["params"]["kernel_scale"], self.dtype)
            out = self._absorbed_attention(q_nope, q_rope, kernel, new_cache, positions)
        else:
            if mode == "prefill":
                new_cache = write_latent_cache(cache, latent, k_rope, positions)
            kvb = checkpoint_name(wkv_b(latent), "value_proj")
            k = jnp.concatenate(
                [kvb[..., :p], jnp.broadcast_to(k_rope[:, :, None], kvb.shape[:3] + (o,))], -1
            )
            qk = jnp.concatenate([q_nope, q_rope], axis=-1)
            v = kvb[..., p:]
            if v_dim != p + o:  # the kernels take one head size: zero columns add nothing to the output
                v = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, p + o - v_dim)))
            spec = kernels.AttentionSpec(
                kernel=self.kernel, scale=self.scale, precision=self.precision, block_size=self.block_size
            )
            qk = constrain(qk, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
            out = kernels.attention(qk, k, v, positions, positions, segment_ids, segment_ids, spec)[
                ..., :v_dim
            ]
        out = checkpoint_name(
            constrain(out, ("activation_batch", "activation_length", "activation_heads", "activation_kv")),
            "context",
        )
        out = self._dense(x.shape[-1], ("heads", "kv", "embed"), "out", axis=(-2, -1))(out)
        return checkpoint_name(out, "out_proj"), new_cache

    def _absorbed_attention(self, q_nope, q_rope, wkv_b_kernel, cache, positions):
        """Queries [B, T, N, P] / [B, T, N, O] against the latent cache; slot j is visible to a query at
        position p when j <= p. Scores and softmax in float32. Returns [B, T, N, V]."""
        p = self.qk_nope_head_dim
        w = wkv_b_kernel.astype(self.dtype)  # [R, N, P + V]
        latent = cache["latent"].astype(self.dtype)
        k_rope = cache["k_rope"].astype(self.dtype)
        hp = dict(precision=self.precision, preferred_element_type=jnp.float32)
        q_latent = jnp.einsum("btnp,rnp->btnr", q_nope, w[..., :p], **hp)
        scores = jnp.einsum("btnr,bsr->bnts", q_latent, latent, **hp)
        scores = scores + jnp.einsum("btno,bso->bnts", q_rope, k_rope, **hp)
        b, s = latent.shape[:2]
        slots = jnp.broadcast_to(jnp.arange(s, dtype=positions.dtype), (b, s))
        ok = allowed(positions, slots, jnp.ones_like(positions), jnp.ones_like(slots), 0)[
            :, 0
        ]  # [B, 1, T, S]
        probs = jax.nn.softmax(jnp.where(ok, scores * self.scale, MASK_VALUE), axis=-1)
        out_latent = jnp.einsum("bnts,bsr->btnr", probs, latent.astype(jnp.float32), **hp)
        out = jnp.einsum("btnr,rnv->btnv", out_latent, w[..., p:].astype(jnp.float32), **hp)
        return out.astype(self.dtype)
