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
    dot: str = "cpu"  # the backend's matmul choice (linears.DenseGeneral.dot)

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

        On CPU (dot="cpu") through dense_dot on the [D, V] view of the table, so the backward is the fast
        x^T g form (the table's gradient is transposed back to [V, D], a [V, D]-sized copy; see dense_dot);
        elsewhere the plain contraction.
        """
        dtype = dtype or self.dtype
        x, table = x.astype(dtype), self.embedding.astype(dtype)
        if self.dot == "cpu":
            return dense_dot(x, table.T, 1, self.precision)
        return jax.lax.dot_general(x, table, (((x.ndim - 1,), (1,)), ((), ())), precision=self.precision)


@jax.tree_util.register_static
class RopeConfig:
    """Rotary embedding settings (hashable, static)."""

    def __init__(self, head_dim, theta, rope_type="default", factor=8.0, low_freq_factor=1.0,
                 high_freq_factor=4.0, original_max_position=8192, beta_fast=32.0, beta_slow=1.0,
                 attention_factor=1.0, interleaved=False):  # fmt: skip
        self.head_dim = head_dim
        self.theta = theta
        self.rope_type = rope_type
        self.factor = factor
        self.low_freq_factor = low_freq_factor
        self.high_freq_factor = high_freq_factor
        self.original_max_position = original_max_position
        # yarn: the correction range in rotations, and the factor on cos/sin (DeepSeek: mscale ratio, 1.0).
        self.beta_fast = beta_fast
        self.beta_slow = beta_slow
        self.attention_factor = attention_factor
        # DeepSeek's layout: rotated pairs are (x0, x1), (x2, x3), ... rather than (x_i, x_{i + H/2}).
        self.interleaved = interleaved

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
    if rope.rope_type == "yarn":
        return _yarn_inverse_frequencies(rope, inv_freq)
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


def _yarn_inverse_frequencies(rope: RopeConfig, inv_freq):
    """YaRN (Peng et al. 2023): frequencies that turn fewer than beta_slow times over the original context
    are interpolated (/ factor), those that turn more than beta_fast times kept, with a linear ramp between
    (dimension bounds rounded outwards, as DeepSeek's reference does)."""
    dim, base, orig = rope.head_dim, rope.theta, rope.original_max_position

    def correction_dim(rotations):
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(rope.beta_fast)), 0)
    high = min(math.ceil(correction_dim(rope.beta_slow)), dim - 1)
    high = high + 0.001 if low == high else high
    ramp = jnp.clip((jnp.arange(dim // 2, dtype=jnp.float32) - low) / (high - low), 0.0, 1.0)
    keep = 1.0 - ramp  # 1 = extrapolate (keep the frequency), 0 = interpolate
    return inv_freq / rope.factor * (1.0 - keep) + inv_freq * keep


def yarn_mscale(factor: float, mscale: float) -> float:
    """YaRN's attention temperature 0.1 x mscale x ln(factor) + 1 (1 when not stretched)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def apply_rope(x, positions, rope: RopeConfig):
    """Rotates x [B, T, heads, H] by positions [B, T]. Math in float32.

    Rotate-half layout: pair i is (x_i, x_{i + H/2}). Interleaved (rope.interleaved): pair i is
    (x_{2i}, x_{2i+1}), and the output is in rotate-half layout (rotated firsts, then rotated seconds), as
    Hugging Face's DeepSeek does; q and k are treated alike, so their dot products are those of the pairs.
    """
    inv_freq = inverse_frequencies(rope)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, H]
    x32 = x.astype(jnp.float32)
    if rope.interleaved:
        x32 = jnp.concatenate([x32[..., 0::2], x32[..., 1::2]], axis=-1)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    cos, sin = jnp.cos(angles) * rope.attention_factor, jnp.sin(angles) * rope.attention_factor
    return (x32 * cos + rotated * sin).astype(x.dtype)
