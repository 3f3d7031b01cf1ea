"""Normalization layers."""

import flax.linen as nn
import jax.numpy as jnp

from MaxText.layers.common import param_with_axes


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis: y = x / rms(x) * (scale_offset + scale).

    `scale` holds the published weights unchanged; Gemma-style `1 + w` norms set scale_offset=1.0 (with
    zero-initialised scale) rather than folding the 1 into the checkpoint. Statistics are taken in float32.
    """

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    weight_dtype: jnp.dtype = jnp.float32
    scale_offset: float = 0.0
    kernel_axes: tuple = ("norm",)

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        init = nn.initializers.zeros if self.scale_offset else nn.initializers.ones
        scale = param_with_axes(self, "scale", init, (features,), self.weight_dtype, self.kernel_axes)
        x32 = x.astype(jnp.float32)
        y = x32 * jnp.reciprocal(jnp.sqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon))
        return (y * (self.scale_offset + scale.astype(jnp.float32))).astype(self.dtype)
