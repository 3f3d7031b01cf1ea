"""Attention kernels behind one interface and one plan.

Axis legend: B batch, T query length, S key length, N query heads, K kv heads, G = N / K, H head dim.

`attention(q, k, v, q_pos, k_pos, q_seg, k_seg, spec)` with q [B, T, N, H], k/v [B, S, K, H], positions and
segment ids [B, T] / [B, S] returns [B, T, N, H]. Query i sees key j when both are in the same segment,
k_pos[j] <= q_pos[i], and (sliding window W > 0) q_pos[i] - k_pos[j] < W. Every kernel honours all of it or
refuses (splash: see kernels/splash.py). `decode_attention` and `paged_attention` are the decode step over a
contiguous and a paged cache, `absorbed_attention` (kernels/latent.py) over MLA's latent one.
spec.kernel names the kernel that runs, as the KernelPlan (kernels/plan.py) resolved it from the `attention`
setting, the phase, the cache layout and the target; nothing here asks the platform.
"""

import jax.numpy as jnp

from MaxText.kernels import plan as plan_lib
from MaxText.kernels.flash import flash_attention
from MaxText.kernels.flash_pallas import flash_attention_pallas
from MaxText.kernels.latent import absorbed_attention
from MaxText.kernels.masks import AttentionSpec
from MaxText.kernels.paged import paged_attention_reference
from MaxText.kernels.paged_pallas import paged_attention_pallas
from MaxText.kernels.plan import KernelPlan, plan_for, platform_of
from MaxText.kernels.reference import dot_product_attention
from MaxText.kernels.splash import splash_attention

ATTENTION_CHOICES = plan_lib.ATTEND_KERNELS + plan_lib.TABLE_SETTINGS


def _splash(q, k, v, q_pos, k_pos, q_seg, k_seg, spec):
    return splash_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, spec, interpret=spec.interpret)


def _flash_pallas(q, k, v, q_pos, k_pos, q_seg, k_seg, spec):
    return flash_attention_pallas(q, k, v, q_pos, k_pos, q_seg, k_seg, spec, interpret=spec.interpret)


# Attend-phase kernels by the names KernelPlan.attend_kernel returns.
KERNELS = {
    "dot_product": dot_product_attention,
    "flash": flash_attention,
    "flash_pallas": _flash_pallas,
    "splash": _splash,
}

# Decode kernels over MLA's latent cache, by the name KernelPlan.decode_kernel("latent") returns.
LATENT_KERNELS = {"absorbed": absorbed_attention}


def attention(q, k, v, q_pos, k_pos, q_seg, k_seg, spec: AttentionSpec):
    """Attention among tokens (train, prefill) with the kernel spec.kernel names."""
    if spec.kernel not in KERNELS:
        raise ValueError(
            f"attention kernel {spec.kernel!r}: expected one of {sorted(KERNELS)} (a setting such as "
            "autoselected is resolved by kernels.plan_for first)"
        )
    return KERNELS[spec.kernel](q, k, v, q_pos, k_pos, q_seg, k_seg, spec)


def decode_attention(q, k, v, q_pos, spec: AttentionSpec):
    """Decode step over a contiguous cache k/v [B, K, S, H] whose slot j holds position j: the reference
    kernel reads the cache in that layout (one query per row against a long cache: the efficient choice)."""
    b, s = k.shape[0], k.shape[2]
    slots = jnp.broadcast_to(jnp.arange(s, dtype=q_pos.dtype), (b, s))
    ones_q, ones_k = jnp.ones_like(q_pos), jnp.ones_like(slots)
    return dot_product_attention(q, k, v, q_pos, slots, ones_q, ones_k, spec, kv_heads_major=True)


def paged_attention(q, k_pages, v_pages, page_table, q_pos, spec: AttentionSpec, k_scale=None, v_scale=None):
    """Decode step over a paged cache (same contract as paged.paged_attention_reference): the Pallas kernel
    when spec.kernel is "paged" (KernelPlan.decode_kernel gives it only for one float query per row), else
    the reference, which dequantizes an int8 pool after its gather."""
    if spec.kernel == "paged":
        return paged_attention_pallas(q, k_pages, v_pages, page_table, q_pos, spec, interpret=spec.interpret)
    return paged_attention_reference(q, k_pages, v_pages, page_table, q_pos, spec, k_scale, v_scale)


__all__ = [
    "ATTENTION_CHOICES",
    "AttentionSpec",
    "KERNELS",
    "LATENT_KERNELS",
    "KernelPlan",
    "absorbed_attention",
    "attention",
    "decode_attention",
    "dot_product_attention",
    "flash_attention",
    "flash_attention_pallas",
    "paged_attention",
    "plan_for",
    "platform_of",
    "splash_attention",
]
