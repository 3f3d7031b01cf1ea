"""Masked next-token cross entropy with optional z-loss, summed (the caller divides by token count)."""

import jax
import jax.numpy as jnp
import optax


def cross_entropy_sums(logits, targets, mask, z_loss_multiplier: float = 0.0):
    """logits [B, T, V], targets/mask [B, T] -> dict of sums over unmasked tokens (float32).

    Returns {"loss": sum of CE (+ z-loss), "ce": sum of CE, "z_loss": sum of z, "tokens": count}. Sums,
    not means, so microbatches and hosts combine exactly before one division.
    """
    logits = logits.astype(jnp.float32)
    weights = (mask != 0).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights
    total = ce.sum()
    z = jnp.zeros((), jnp.float32)
    if z_loss_multiplier > 0:
        z = (z_loss_multiplier * jnp.square(jax.nn.logsumexp(logits, axis=-1)) * weights).sum()
    return {"loss": total + z, "ce": total, "z_loss": z, "tokens": weights.sum()}
