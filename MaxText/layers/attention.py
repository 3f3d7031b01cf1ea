"""Multi-head attention with GQA/MQA, RoPE, sliding windows and an explicit KV cache.

Axis legend: B batch, T query length, S key length (cache length when decoding), N query heads,
K kv heads, G = N / K, H head dim, D model dim.

Modes (an argument, never stored state):
- "train":          attend within the T tokens; no cache.
- "prefill":        attend within the T prompt tokens and write their K/V into `cache` at slots = positions.
- "autoregressive": write the T new tokens' K/V at slots = positions, then attend over the whole cache;
                    slot j is visible to a query at position p when j <= p (and p - j < W with a window).
The cache is one typed K/V cache per layer (inference/kv_cache.py: contiguous, quantized, paged, quantized
paged), an explicit input and output, never mutated in place: the layer calls its `write` and `attend`.
Which kernel runs comes from the model's KernelPlan (kernels/plan.py), decided once for the target.
"""

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jax.ad_checkpoint import checkpoint_name

from MaxText import kernels
from MaxText.kernels.plan import KV_LAYOUTS, KernelPlan, check_cache
from MaxText.layers.common import constrain
from MaxText.layers.embeddings import RopeConfig, apply_rope
from MaxText.layers.linears import DenseGeneral
from MaxText.layers.lora import LoraSpec
from MaxText.layers.normalizations import RMSNorm
from MaxText.layers.quantizations import QuantConfig

MODES = ("train", "prefill", "autoregressive")
# Pallas kernels: XLA cannot partition their custom calls (Mosaic refuses; a Triton call would be replicated
# onto every device), so on a mesh they run per shard under shard_map, as the plan's target compiles them.
PER_SHARD_KERNELS = ("splash", "flash_pallas")


def _mesh_axes(name: str):
    return nn.logical_to_mesh_axes((name,))[0]


def _shards(mesh, part) -> int:
    axes = () if part is None else (part if isinstance(part, tuple) else (part,))
    return math.prod(mesh.shape[a] for a in axes)


def attend(q, k, v, positions, segment_ids, spec: kernels.AttentionSpec):
    """Attention among the T tokens (train, prefill) with spec.kernel; q [B, T, N, H], k/v [B, T, K, H].

    A Pallas kernel on a mesh runs per shard: rows split as activation_batch says and heads as
    activation_heads / activation_kv_heads say when both split alike (else heads stay whole); every shard
    sees its rows' whole sequence."""

    def call(q, k, v, pos, seg):
        return kernels.attention(q, k, v, pos, pos, seg, seg, spec)

    mesh = jax.sharding.get_abstract_mesh()
    if spec.kernel not in PER_SHARD_KERNELS or mesh.empty:
        return call(q, k, v, positions, segment_ids)
    batch, heads, kv_heads = (
        _mesh_axes(n) for n in ("activation_batch", "activation_heads", "activation_kv_heads")
    )
    if q.shape[0] % _shards(mesh, batch):
        batch = None
    if heads != kv_heads or q.shape[2] % _shards(mesh, heads) or k.shape[2] % _shards(mesh, kv_heads):
        heads = kv_heads = None
    q_spec, kv_spec, row_spec = P(batch, None, heads, None), P(batch, None, kv_heads, None), P(batch, None)
    return jax.shard_map(
        call, in_specs=(q_spec, kv_spec, kv_spec, row_spec, row_spec), out_specs=q_spec, check_vma=False
    )(q, k, v, positions, segment_ids)


class Attention(nn.Module):
    """Self-attention. Parameters: query [D, N, H], key/value [D, K, H], out [N, H, D] (plus biases [N, H],
    [K, H], [D] with use_bias, and query_norm/key_norm scales [H] with qk_norm).

    scale defaults to 1/sqrt(H); it is applied to the scores, never folded into the weights.
    qk_norm: RMSNorm over H of each query and key head before RoPE, computing x_hat * (qk_norm_offset + w);
    with qk_norm_across_heads one RMSNorm over all N*H query features and one over all K*H key features
    (scales [N*H], [K*H]), as OLMo 3 normalises the whole projection.
    """

    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    rope: Optional[RopeConfig]
    plan: KernelPlan = KernelPlan()
    scale: Optional[float] = None
    sliding_window: int = 0
    soft_cap: float = 0.0
    block_size: int = 128
    use_bias: bool = False
    qk_norm: bool = False
    qk_norm_epsilon: float = 1e-6
    qk_norm_offset: float = 0.0
    qk_norm_across_heads: bool = False
    dtype: jnp.dtype = jnp.float32
    weight_dtype: jnp.dtype = jnp.float32
    precision: jax.lax.Precision = jax.lax.Precision.DEFAULT
    quant: QuantConfig = QuantConfig()
    lora: LoraSpec = LoraSpec()

    def _spec(self, kernel):
        scale = self.scale if self.scale is not None else self.head_dim**-0.5
        return kernels.AttentionSpec(
            kernel=kernel,
            scale=scale,
            sliding_window=self.sliding_window,
            soft_cap=self.soft_cap,
            precision=self.precision,
            block_size=self.block_size,
            interpret=self.plan.interpret(kernel),
        )

    @nn.compact
    def __call__(self, x, positions, segment_ids, mode: str, cache: Optional[dict] = None):
        """x [B, T, D], positions/segment_ids [B, T] -> (out [B, T, D], new cache or None)."""
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {MODES}")
        dense = dict(
            dtype=self.dtype, weight_dtype=self.weight_dtype, precision=self.precision, use_bias=self.use_bias
        )
        dense["quant"], dense["dot"], dense["lora"] = self.quant, self.plan.dot, self.lora
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
            if self.qk_norm_across_heads:
                q = RMSNorm(name="query_norm", **norm)(q.reshape(*q.shape[:-2], n * h)).reshape(q.shape)
                k = RMSNorm(name="key_norm", **norm)(k.reshape(*k.shape[:-2], kh * h)).reshape(k.shape)
            else:
                q = RMSNorm(name="query_norm", **norm)(q)
                k = RMSNorm(name="key_norm", **norm)(k)
        if self.rope is not None:
            q, k = apply_rope(q, positions, self.rope), apply_rope(k, positions, self.rope)
        q = constrain(q, ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
        k = constrain(k, ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv"))
        v = constrain(v, ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv"))

        new_cache = None
        if mode != "train":
            check_cache(cache, KV_LAYOUTS, "self-attention")
            new_cache = cache.write(k, v, positions)
        if mode == "autoregressive":
            spec = self._spec(self.plan.decode_kernel(cache.LAYOUT, q.shape[1]))
            out = new_cache.attend(q, positions, spec, self.dtype)
        else:
            out = attend(q, k, v, positions, segment_ids, self._spec(self.plan.attend_kernel(k.shape[1])))
        out = checkpoint_name(
            constrain(out, ("activation_batch", "activation_length", "activation_heads", "activation_kv")),
            "context",
        )
        out = DenseGeneral(
            x.shape[-1], axis=(-2, -1), kernel_axes=("heads", "kv", "embed"), name="out", **dense
        )(out)
        return checkpoint_name(out, "out_proj"), new_cache
