"""Dense projections and the (gated) MLP block."""

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from MaxText.config.choices import Activation
from MaxText.layers.common import constrain, param_with_axes
from MaxText.layers.lora import LoraSpec, lora_delta
from MaxText.layers.quantizations import QuantConfig, quantized_dot

ACTIVATIONS = {
    Activation.SILU: jax.nn.silu,
    Activation.GELU: lambda x: jax.nn.gelu(x, approximate=False),
    Activation.GELU_TANH: lambda x: jax.nn.gelu(x, approximate=True),
    Activation.RELU: jax.nn.relu,
    Activation.LINEAR: lambda x: x,
}


def _normalize_axes(axes, ndim):
    return tuple(a % ndim for a in axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def dense_dot(x, kernel, num_in: int, precision=None):
    """x [*batch, *in] . kernel [*in, *out] -> [*batch, *out], contracting the last `num_in` axes of x.

    The value is jax.lax.dot_general's; only the backward is written by hand. JAX's transpose rule emits
    the kernel gradient as dot(g, x) and a transpose, which XLA:CPU compiles to a dot with a transposed
    operand that it runs through Eigen rather than YNNPACK, about 2x slower for the [B*T, D] x [B*T, V]
    logits gradient. Written as dkernel = x^T g in [*in, *out] order, only the activation x is
    transposed. The reference model's CPU train step is ~35% faster (benchmarks/README.md); other
    backends get the same dots. Residuals are x and kernel, as with autodiff.
    """
    return _dense_dot_fwd(x, kernel, num_in, precision)[0]


def _dense_dot_fwd(x, kernel, num_in, precision):
    x_in = tuple(range(x.ndim - num_in, x.ndim))
    y = jax.lax.dot_general(x, kernel, ((x_in, tuple(range(num_in))), ((), ())), precision=precision)
    return y, (x, kernel)


def _dense_dot_bwd(num_in, precision, res, g):
    x, kernel = res
    n_batch = x.ndim - num_in
    g_out = tuple(range(n_batch, g.ndim))
    k_out = tuple(range(num_in, kernel.ndim))
    dx = jax.lax.dot_general(g, kernel, ((g_out, k_out), ((), ())), precision=precision)
    batch = tuple(range(n_batch))
    dkernel = jax.lax.dot_general(x, g, ((batch, batch), ((), ())), precision=precision)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


dense_dot.defvjp(_dense_dot_fwd, _dense_dot_bwd)


def _dims(a, num_in: int) -> tuple:
    return ((tuple(range(a.ndim - num_in, a.ndim)), tuple(range(num_in))), ((), ()))


def _xla_dot(num_in, precision, a, b, _, preferred_element_type):
    """The plain contraction of a's last num_in axes with b's first (TPU, GPU)."""
    dims = _dims(a, num_in)
    return jax.lax.dot_general(a, b, dims, precision, preferred_element_type)


def _cpu_dot(num_in, precision, a, b, _, preferred_element_type):
    """The same contraction shaped for XLA:CPU: dense_dot's backward, and one-row int8 products padded."""
    if preferred_element_type is None:
        return dense_dot(a, b, num_in, precision)
    dims = _dims(a, num_in)
    if preferred_element_type == jnp.int32 and a.ndim > num_in and a.size == math.prod(a.shape[-num_in:]):
        # One row (batch-1 decode): XLA:CPU runs an int8 matrix-vector product about 7x slower than
        # two rows (4.6 vs 0.6 ms for 256 x 32000), so add a zero row; integer sums make it exact.
        two = jnp.concatenate([a, jnp.zeros_like(a)], axis=0)
        return jax.lax.dot_general(two, b, dims, precision, preferred_element_type)[:1]
    return jax.lax.dot_general(a, b, dims, precision, preferred_element_type)


class DenseGeneral(nn.Module):
    """A dense layer over one or more input axes with a multi-axis output.

    Kernel shape is in_shape + features, with logical names `kernel_axes`. No bias unless use_bias.
    Inputs are cast to `dtype`; the kernel is stored in `weight_dtype` and cast for the matmul.
    `quant` (layers/quantizations.py) quantizes the matmul; with quant.stored the kernel is int8 and a
    float32 `kernel_scale` (kernel's shape with the input axes 1) sits beside it.
    `dot` is the backend's matmul choice (KernelPlan.dot): "cpu" runs dense_dot and pads one-row int8
    products (both for XLA:CPU), "xla" the plain dot_general.
    `lora` (layers/lora.py) adds a low-rank adapter when it targets this module's name.
    """

    features: Sequence[int]
    axis: Sequence[int] = (-1,)
    kernel_axes: tuple = ()
    dtype: jnp.dtype = jnp.float32
    weight_dtype: jnp.dtype = jnp.float32
    precision: jax.lax.Precision = jax.lax.Precision.DEFAULT
    use_bias: bool = False
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    quant: QuantConfig = QuantConfig()
    dot: str = "cpu"
    lora: LoraSpec = LoraSpec()

    @nn.compact
    def __call__(self, x):
        features = tuple(self.features) if isinstance(self.features, (list, tuple)) else (self.features,)
        axis = _normalize_axes(self.axis if isinstance(self.axis, (list, tuple)) else (self.axis,), x.ndim)
        in_shape = tuple(x.shape[a] for a in axis)
        fan_in_axes = tuple(range(len(in_shape)))
        fan_out_axes = tuple(range(len(in_shape), len(in_shape) + len(features)))
        init = nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=fan_in_axes, out_axis=fan_out_axes
        )
        x = x.astype(self.dtype)
        trailing = tuple(range(x.ndim - len(axis), x.ndim))
        if axis != trailing:  # dense_dot contracts trailing axes; XLA folds this transpose into the dot
            x = jnp.moveaxis(x, axis, trailing)
        num_in = len(axis)

        dot = functools.partial(_cpu_dot if self.dot == "cpu" else _xla_dot, num_in, self.precision)

        w_scale = None
        if self.quant.stored:
            kernel = param_with_axes(
                self, "kernel", nn.initializers.zeros, in_shape + features, jnp.int8, self.kernel_axes
            )
            scale_shape = (1,) * num_in + features
            scale_axes = ((None,) * num_in + tuple(self.kernel_axes[num_in:])) if self.kernel_axes else ()
            w_scale = param_with_axes(
                self, "kernel_scale", nn.initializers.ones, scale_shape, jnp.float32, scale_axes
            )
        else:
            kernel = param_with_axes(
                self, "kernel", init, in_shape + features, self.weight_dtype, self.kernel_axes
            ).astype(self.dtype)
        y = quantized_dot(self.quant, dot, x, kernel, trailing, tuple(range(num_in)), w_scale=w_scale)
        if self.use_bias:
            bias = param_with_axes(
                self,
                "bias",
                nn.initializers.zeros,
                features,
                self.weight_dtype,
                self.kernel_axes[-len(features) :],
            )
            y = y + bias.astype(self.dtype)
        if self.lora.adapts(self.name):
            y = y + lora_delta(self, x, self.lora, num_in, features, self.kernel_axes, self.dtype)
        return y


class MlpBlock(nn.Module):
    """Gated MLP: wo(act_0(wi_0 x) * act_1(wi_1 x) ...). One activation = plain MLP with `wi`.

    Shapes: x [B, T, D] -> [B, T, D]; hidden F = mlp_dim.
    """

    mlp_dim: int
    activations: tuple = ("silu", "linear")
    dtype: jnp.dtype = jnp.float32
    weight_dtype: jnp.dtype = jnp.float32
    precision: jax.lax.Precision = jax.lax.Precision.DEFAULT
    use_bias: bool = False
    quant: QuantConfig = QuantConfig()
    dot: str = "cpu"  # DenseGeneral.dot
    lora: LoraSpec = LoraSpec()

    @nn.compact
    def __call__(self, x):
        dense = dict(
            dtype=self.dtype,
            weight_dtype=self.weight_dtype,
            precision=self.precision,
            use_bias=self.use_bias,
            quant=self.quant,
            dot=self.dot,
            lora=self.lora,
        )
        hidden = None
        for i, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            h = DenseGeneral(self.mlp_dim, kernel_axes=("embed", "mlp"), name=name, **dense)(x)
            h = ACTIVATIONS[act](checkpoint_name(h, "mlpwi"))
            hidden = h if hidden is None else hidden * h
        hidden = constrain(hidden, ("activation_batch", "activation_length", "activation_mlp"))
        out = DenseGeneral(x.shape[-1], kernel_axes=("mlp", "embed"), name="wo", **dense)(hidden)
        return checkpoint_name(out, "mlpwo")
