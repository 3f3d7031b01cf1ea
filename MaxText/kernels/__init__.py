"""Attention kernels behind one interface.

Axis legend: B batch, T query length, S key length, N query heads, K kv heads, G = N / K, H head dim.

`attention(q, k, v, q_pos, k_pos, q_seg, k_seg, spec)` with q [B, T, N, H], k/v [B, S, K, H], positions and
segment ids [B, T] / [B, S] returns [B, T, N, H]. Query i sees key j when both are in the same segment,
k_pos[j] <= q_pos[i], and (sliding window W > 0) q_pos[i] - k_pos[j] < W. Every kernel honours all of it.
"""

from MaxText.kernels.masks import AttentionSpec
from MaxText.kernels.reference import dot_product_attention
from MaxText.kernels.flash import flash_attention

KERNELS = {"dot_product": dot_product_attention, "flash": flash_attention}


def attention(q, k, v, q_pos, k_pos, q_seg, k_seg, spec: AttentionSpec):
    """Dispatches to the kernel named by spec.kernel."""
    if spec.kernel not in KERNELS:
        raise ValueError(f"attention={spec.kernel!r}: expected one of {sorted(KERNELS)}")
    return KERNELS[spec.kernel](q, k, v, q_pos, k_pos, q_seg, k_seg, spec)


__all__ = ["AttentionSpec", "attention", "dot_product_attention", "flash_attention", "KERNELS"]
