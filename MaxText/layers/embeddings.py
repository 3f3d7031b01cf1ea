"""Token embeddings and rotary position embeddings (rotate-half layout, as Hugging Face stores q/k)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from MaxText.layers.common import param_with_axes
from MaxText.layers.linears import dense_dot


class Embed(nn.Module):
    """Token embedding table [V, D] (logical axes vocab, embed); `attend` gives tied output logits."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32
    weight_dtype: jnp.dtype = jnp.float32
    precision: jax.lax.Precision = jax.lax.Precision.DEFAULT

    def setup(self):
        self.embedding = param_with_axes(
            self,
            "embedding",
            nn.initializers.normal(stddev=0.02),
            (self.num_embeddings, self.features),
            self.weight_dtype,
            ("vocab", "embed"),
        )

    def __call__(self, ids):
        """ids [B, T] int -> [B, T, D]."""
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x, dtype=None):
        """x [B, T, D] -> logits [B, T, V] against the embedding table.

        Through dense_dot on the [D, V] view of the table, so the backward is the fast x^T g form (the
        table's gradient is transposed back to [V, D], a [V, D]-sized copy; see dense_dot).
        """
        dtype = dtype or self.dtype
        return dense_dot(x.astype(dtype), self.embedding.astype(dtype).T, 1, self.precision)


@jax.tree_util.register_static
class RopeConfig:
    """Rotary embedding settings (hashable, static)."""

    def __init__(self, head_dim, theta, rope_type="default", factor=8.0, low_freq_factor=1.0,
                 high_freq_factor=4.0, original_max_position=8192):  # fmt: skip
        self.head_dim = head_dim
        self.theta = theta
        self.rope_type = rope_type
        self.factor = factor
        self.low_freq_factor = low_freq_factor
        self.high_freq_factor = high_freq_factor
        self.original_max_position = original_max_position

    def _key(self):
        return tuple(vars(self).values())

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, RopeConfig) and self._key() == other._key()


def inverse_frequencies(rope: RopeConfig) -> jnp.ndarray:
    """Per-pair inverse frequencies [H/2] in float32: llama3 scaling when rope_type == 'llama3', and all
    frequencies divided by `factor` (positions interpolated) when rope_type == 'linear'."""
    exponents = jnp.arange(0, rope.head_dim, 2, dtype=jnp.float32) / rope.head_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.rope_type == "default":
        return inv_freq
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, and the band between blended.
    low_wavelen = rope.original_max_position / rope.low_freq_factor
    high_wavelen = rope.original_max_position / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, blended, scaled)


def apply_rope(x, positions, rope: RopeConfig):
    """Rotates x [B, T, heads, H] by positions [B, T] (rotate-half layout). Math in float32."""
    inv_freq = inverse_frequencies(rope)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, H]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)
