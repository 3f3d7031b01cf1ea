"""Multi-head latent attention (DeepSeek V2/V3) with a compressed-latent decode cache.

Axis legend: B batch, T query length, S key length (cache length when decoding), N heads, D model dim,
Q q_lora_rank, R kv_lora_rank, P qk_nope_head_dim, O qk_rope_head_dim, V v_head_dim.

    q     = wq_b(q_norm(wq_a(x)))  [B, T, N, P + O]   (or query(x) when q_lora_rank = 0)
    c, kr = wkv_a(x)               [B, T, R], [B, T, O]  (kr: one rope key shared by all heads)
    c     = kv_norm(c);  k_nope, v = wkv_b(c)  [B, T, N, P], [B, T, N, V]
    score = (q_nope . k_nope + rope(q_rope) . rope(kr)) x scale;  out = out(softmax(score) . v)
scale is (P + O)^-0.5, times yarn_mscale(factor, mscale_all_dim)^2 under YaRN; nothing is folded into weights.

Decode cache: a LatentCache (inference/kv_cache.py) of latent [B, S, R] and k_rope [B, S, O], the normalised latent c and the rotated rope key
of every token, i.e. (R + O) values per token and layer instead of N x (P + O + V) for full keys and values
(576 vs 40,960 for DeepSeek V3: 71x less memory and memory traffic per decoded token). Decoding attends in
the latent space by absorbing wkv_b into the query and the output ("weight absorption"):
    q_nope . k_nope = (q_nope . wkv_b_k) . c,    out_v = (softmax . c) . wkv_b_v,
so the cache is never expanded to per-head keys and values (kernels/latent.py,
the KernelPlan's "absorbed"). Train and prefill expand them once (the
standard attention kernels then apply, with V zero-padded to P + O when the sizes differ).
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from MaxText import kernels
from MaxText.kernels.plan import KernelPlan, check_cache
from MaxText.layers.attention import MODES, attend
from MaxText.layers.common import constrain
from MaxText.layers.embeddings import RopeConfig, apply_rope
from MaxText.layers.linears import DenseGeneral
from MaxText.layers.lora import LoraSpec
from MaxText.layers.normalizations import RMSNorm
from MaxText.layers.quantizations import QuantConfig, dequantize


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
    plan: KernelPlan = KernelPlan()
    block_size: int = 128
    norm_epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    weight_dtype: jnp.dtype = jnp.float32
    precision: jax.lax.Precision = jax.lax.Precision.DEFAULT
    quant: QuantConfig = QuantConfig()
    lora: LoraSpec = LoraSpec()

    def _dense(self, features, axes, name, axis=-1):
        return DenseGeneral(
            features,
            axis=axis,
            kernel_axes=axes,
            dtype=self.dtype,
            weight_dtype=self.weight_dtype,
            precision=self.precision,
            quant=self.quant,
            dot=self.plan.dot,
            lora=self.lora,
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
        if mode != "train":
            check_cache(cache, ("latent",), "multi-head latent attention")
            new_cache = cache.write(latent, k_rope, positions)
        if mode == "autoregressive":
            wkv_b(latent[:, :0])  # binds (and at init creates) the kernel; no tokens expanded
            kernel = wkv_b.variables["params"]["kernel"]
            if self.quant.stored:  # absorbed into the query in float: dequantize the stored int8 kernel
                kernel = dequantize(kernel, wkv_b.variables["params"]["kernel_scale"], self.dtype)
            absorbed = kernels.LATENT_KERNELS[self.plan.decode_kernel(cache.LAYOUT, q.shape[1])]
            out = absorbed(
                q_nope, q_rope, kernel, new_cache.latent, new_cache.k_rope, positions, self.scale, self.precision,
                self.dtype,
            )  # fmt: skip
        else:
            kvb = checkpoint_name(wkv_b(latent), "value_proj")
            k = jnp.concatenate(
                [kvb[..., :p], jnp.broadcast_to(k_rope[:, :, None], kvb.shape[:3] + (o,))], -1
            )
            qk = jnp.concatenate([q_nope, q_rope], axis=-1)
            v = kvb[..., p:]
            if v_dim != p + o:  # the kernels take one head size: zero columns add nothing to the output
                v = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, p + o - v_dim)))
            kernel = self.plan.attend_kernel(k.shape[1])
            spec = kernels.AttentionSpec(
                kernel=kernel, scale=self.scale, precision=self.precision, block_size=self.block_size,
                interpret=self.plan.interpret(kernel),
            )  # fmt: skip
            qk = constrain(qk, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
            out = attend(qk, k, v, positions, segment_ids, spec)[..., :v_dim]
        out = checkpoint_name(
            constrain(out, ("activation_batch", "activation_length", "activation_heads", "activation_kv")),
            "context",
        )
        out = self._dense(x.shape[-1], ("heads", "kv", "embed"), "out", axis=(-2, -1))(out)
        return checkpoint_name(out, "out_proj"), new_cache
