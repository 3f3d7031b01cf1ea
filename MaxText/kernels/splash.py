"""JAX's TPU splash-attention kernel (jax.experimental.pallas.ops.tpu.splash_attention) behind the interface.

Axis legend: B batch, T tokens (queries = keys), N query heads, K kv heads, G = N / K, H head dim, C block
size (flash_block_size, a multiple of 128: splash tiles by TPU lanes), Tp = T padded to a multiple of C.

How each feature maps onto splash:
- causal / sliding window: a static CausalMask, or LocalMask with window (W - 1, 0), over token indices;
- segment ids: splash's SegmentIds;
- soft cap: attn_logits_soft_cap (applied to the scaled logits, as in every kernel here);
- scale: splash does not scale, so q is multiplied by it first;
- GQA: the MQA variant (G query heads against one kv head) mapped over rows and kv heads.

Splash's mask is built from token indices, not positions. That equals the interface's position rule exactly
when queries and keys are the same tokens (T = S, q_pos = k_pos, q_seg = k_seg) and, inside each non-zero
segment, positions advance by one per token: packed training rows and prefill buckets. Segment 0 is
padding (the data pipeline's convention; the loss never reads it), so its rows are unconstrained. Anything
else is refused: T != S (a decode step over a cache) raises ValueError at trace time, and positions that
break the rule at run time turn the output into NaN rather than silently attending to the wrong keys.
Off TPU the kernel runs through Pallas's interpreter (slow; for tests).
"""

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa

from MaxText.kernels.masks import AttentionSpec

LANES = 128


def _kernel(length: int, groups: int, window: int, soft_cap: float, block: int, interpret: bool):
    if window > 0:
        mask = sa.LocalMask((length, length), window_size=(window - 1, 0), offset=0)
    else:
        mask = sa.CausalMask((length, length))
    sizes = dict.fromkeys(
        ("block_q", "block_kv", "block_kv_compute", "block_q_dkv", "block_kv_dkv", "block_kv_dkv_compute",
         "block_q_dq", "block_kv_dq"),
        block,
    )  # fmt: skip
    # Built per trace, not cached: the kernel holds the mask's block tables as arrays of the trace that made
    # it (a cached one leaks tracers under scan/remat). The NumPy mask processing behind it is cached by JAX.
    return sa.make_splash_mqa_single_device(
        sa.MultiHeadMask([mask] * groups),
        block_sizes=sa.BlockSizes(**sizes),
        attn_logits_soft_cap=soft_cap if soft_cap > 0 else None,
        interpret=interpret,
    )


def _positions_follow_indices(q_pos, k_pos, q_seg, k_seg):
    """True when the index-built mask equals the position rule (see the module docstring)."""
    same_tokens = jnp.all(q_pos == k_pos) & jnp.all(q_seg == k_seg)
    inside = (q_seg[:, 1:] == q_seg[:, :-1]) & (q_seg[:, 1:] != 0)
    steps = jnp.where(inside, q_pos[:, 1:] - q_pos[:, :-1], 1)
    return same_tokens & jnp.all(steps == 1)


def splash_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, spec: AttentionSpec, interpret=None):
    """Same contract as dot_product_attention (restricted as the module docstring says): q [B, T, N, H],
    k/v [B, T, K, H] -> [B, T, N, H]. interpret=None: compiled on TPU, interpreted elsewhere."""
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    if t != s:
        raise ValueError(
            f"attention=splash: attends among the same T tokens (train, prefill); got {t} queries against "
            f"{s} keys (a decode step over a cache uses dot_product or paged)"
        )
    block = spec.block_size
    if block % LANES:
        raise ValueError(f"attention=splash: flash_block_size={block} must be a multiple of {LANES}")
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    tp = -(-t // block) * block
    kernel = _kernel(tp, n // kh, spec.sliding_window, float(spec.soft_cap), block, interpret)

    def pad(x, value=0):  # padded tokens form segment -1 of their own: real tokens never see them
        widths = [(0, 0), (0, tp - t)] + [(0, 0)] * (x.ndim - 2)
        return jnp.pad(x, widths, constant_values=value)

    qg = pad(q * jnp.asarray(spec.scale, q.dtype)).reshape(b, tp, kh, n // kh, h).transpose(0, 2, 3, 1, 4)
    kt, vt = pad(k).transpose(0, 2, 1, 3), pad(v).transpose(0, 2, 1, 3)  # [B, K, Tp, H]
    segments = sa.SegmentIds(q=pad(q_seg, -1), kv=pad(k_seg, -1))

    def one_row(qr, kr, vr, seg):  # [K, G, Tp, H], [K, Tp, H] -> [K, G, Tp, H]
        return jax.vmap(lambda a, b_, c: kernel(a, b_, c, segment_ids=seg))(qr, kr, vr)

    out = jax.vmap(one_row)(qg, kt, vt, segments)  # [B, K, G, Tp, H]
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, tp, n, h)[:, :t]
    return jnp.where(_positions_follow_indices(q_pos, k_pos, q_seg, k_seg), out, jnp.nan)
