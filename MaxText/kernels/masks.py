"""The attention mask and score transform that every kernel shares."""

import dataclasses

import jax.numpy as jnp

# Masked scores use a large finite value rather than -inf, so fully masked rows (padding) stay finite
# instead of producing NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Static attention settings.

    scale: multiplies q.k (1/sqrt(H) for most models; the model decides, nothing is folded into weights).
    sliding_window: W > 0 limits query i to keys j with i - W < j <= i (positions); 0 = full causal.
    soft_cap: > 0 applies cap * tanh(score / cap) before masking (Gemma 2).
    kernel: the kernel that runs, as the KernelPlan resolved it (kernels/plan.py).
    interpret: a Pallas kernel (splash, paged) runs in the interpreter (the plan says so off its platform).
    """

    kernel: str = "dot_product"
    scale: float = 1.0
    sliding_window: int = 0
    soft_cap: float = 0.0
    precision: object = None
    block_size: int = 128
    interpret: bool = True


def visible(qp, kp, qs, ks, sliding_window: int):
    """Elementwise rule on broadcastable query/key positions and segment ids (kernels pass tiles, e.g.
    [C, 1] against [1, C]): same segment, key not after the query, and inside the window when W > 0."""
    ok = (qs == ks) & (kp <= qp)
    if sliding_window > 0:
        ok &= qp - kp < sliding_window
    return ok


def allowed(q_pos, k_pos, q_seg, k_seg, sliding_window: int):
    """Boolean [B, 1, 1, T, S]: which keys each query may see (broadcasts over K and G)."""
    ok = visible(q_pos[:, :, None], k_pos[:, None, :], q_seg[:, :, None], k_seg[:, None, :], sliding_window)
    return ok[:, None, None, :, :]


def cap_scores(scores, soft_cap: float):
    return soft_cap * jnp.tanh(scores / soft_cap) if soft_cap > 0 else scores
