"""Masked next-token cross entropy with optional z-loss, summed (the caller divides by token count), and the
MoE load-balance loss read from what the model sowed."""

import functools

import jax
import jax.numpy as jnp

from MaxText.layers.moe import LB_LOSS_NAME


def _target_logit(logits, targets):
    """logits[..., targets] as a masked sum: its gradient is a select, not a scatter into [B, T, V]."""
    vocab = jax.lax.broadcasted_iota(targets.dtype, logits.shape, logits.ndim - 1)
    return jnp.sum(jnp.where(vocab == targets[..., None], logits, 0.0), axis=-1)


def _logsumexp(logits):
    m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    return jnp.log(jnp.sum(jnp.exp(logits - m), axis=-1)) + m[..., 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _weighted_sums(logits, targets, weights, z_loss_multiplier: float):
    """(sum of w * CE, sum of w * z) over [B, T]. logits [B, T, V] float32."""
    return _weighted_sums_fwd(logits, targets, weights, z_loss_multiplier)[0]


def _weighted_sums_fwd(logits, targets, weights, z_loss_multiplier):
    lse = _logsumexp(logits)
    ce_tokens = lse - _target_logit(logits, targets)
    z_tokens = z_loss_multiplier * jnp.square(lse)
    ce = jnp.sum(ce_tokens * weights)
    z = jnp.sum(z_tokens * weights) if z_loss_multiplier else jnp.zeros((), ce.dtype)
    return (ce, z), (logits, targets, weights, lse, ce_tokens, z_tokens)


def _weighted_sums_bwd(z_loss_multiplier, res, cts):
    # d(CE)/d(logits) = softmax - onehot; d(lse^2)/d(logits) = 2 lse softmax. One pass over [B, T, V]
    # writes the whole cotangent; autodiff would materialise the softmax and a scattered one-hot apart.
    logits, targets, weights, lse, ce_tokens, z_tokens = res
    g_ce, g_z = cts
    probs_scale = weights * (g_ce + 2.0 * z_loss_multiplier * g_z * lse)
    probs = jnp.exp(logits - lse[..., None])
    vocab = jax.lax.broadcasted_iota(targets.dtype, logits.shape, logits.ndim - 1)
    onehot_scale = jnp.where(vocab == targets[..., None], (weights * g_ce)[..., None], 0.0)
    d_logits = probs * probs_scale[..., None] - onehot_scale
    return d_logits, None, g_ce * ce_tokens + g_z * z_tokens


_weighted_sums.defvjp(_weighted_sums_fwd, _weighted_sums_bwd)


def cross_entropy_sums(logits, targets, mask, z_loss_multiplier: float = 0.0):
    """logits [B, T, V], targets/mask [B, T] -> dict of sums over unmasked tokens (float32).

    Returns {"loss": sum of CE (+ z-loss), "ce": sum of CE, "z_loss": sum of z, "tokens": count}. Sums,
    not means, so microbatches and hosts combine exactly before one division. CE is logsumexp(logits) minus
    the target logit; the custom VJP gives the same gradient as autodiff (to float32 rounding).
    """
    logits = logits.astype(jnp.float32)
    weights = (mask != 0).astype(jnp.float32)
    ce, z = _weighted_sums(logits, targets, weights, float(z_loss_multiplier))
    return {"loss": ce + z, "ce": ce, "z_loss": z, "tokens": weights.sum()}


def moe_load_balance_loss(intermediates):
    """Mean over MoE layers of the `moe_lb_loss` values the layers sowed (scanned stacks sow one per layer),
    or None when the model has no MoE layer. intermediates: the model's "intermediates" collection."""
    flat = jax.tree_util.tree_flatten_with_path(intermediates)[0]
    values = [jnp.ravel(v) for path, v in flat if any(getattr(k, "key", None) == LB_LOSS_NAME for k in path)]
    return jnp.mean(jnp.concatenate(values)) if values else None
