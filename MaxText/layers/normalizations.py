"""Normalization layers."""

import flax.linen as nn
import jax.numpy as jnp

from MaxText.config.choices import NormType
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


class LayerNorm(nn.Module):
    """Layer norm over the last axis with a bias: y = (x - mean) / sqrt(var + eps) * (offset + scale) + bias.

    Parameters `scale` and `bias` [features]; statistics are taken in float32.
    """

    epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    weight_dtype: jnp.dtype = jnp.float32
    scale_offset: float = 0.0
    kernel_axes: tuple = ("norm",)

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        init = nn.initializers.zeros if self.scale_offset else nn.initializers.ones
        scale = param_with_axes(self, "scale", init, (features,), self.weight_dtype, self.kernel_axes)
        bias = param_with_axes(
            self, "bias", nn.initializers.zeros, (features,), self.weight_dtype, self.kernel_axes
        )
        x32 = x.astype(jnp.float32)
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        y = centred * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
        y = y * (self.scale_offset + scale.astype(jnp.float32)) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


NORMS = {NormType.RMSNORM: RMSNorm, NormType.LAYERNORM: LayerNorm}


def make_norm(kind: str, name: str, **kwargs) -> nn.Module:
    """The norm layer named by a `normalization_type` value ("rmsnorm" or "layernorm")."""
    if kind not in NORMS:
        raise ValueError(f"normalization_type={kind!r}: expected one of {', '.join(NORMS)}")
    return NORMS[kind](name=name, **kwargs)
