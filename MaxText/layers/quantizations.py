"""Matmul and KV-cache quantization, shared by training and decoding (`quantization=`, `quantize_kvcache=`).

Modes (names as in upstream MaxText):
- "":      off; float matmuls.
- "int8":  weights int8 per output channel, activations int8 per token (dynamic), both symmetric; the dot
           runs int8 x int8 -> int32 (preferred_element_type) and is rescaled by the outer product of the
           two scales.
- "int8w": weight-only; weights int8 per output channel, activations stay float.
- "fp8":   weights and activations float8_e4m3fn, one scale per tensor (amax / 448), float32 accumulation.

Training uses straight-through gradients: the backward pass is the float matmul's backward evaluated at the
fake-quantized operands (quantize then dequantize), so rounding is invisible to the gradient.

A caller describes its contraction once, as `dot(a, b, aux, preferred_element_type)`, and names the
contracted axes of each operand. Scales keep those axes with size 1, so `dot(x_scale, w_scale, aux)`
contracts size-1 axes and yields each output element's scale product in the output layout, for a plain
dot_general, an einsum over experts and a ragged_dot alike.

Serving from a quantized checkpoint (`checkpoint_is_quantized=true`) stores each kernel as int8 plus a
float32 `kernel_scale` in the same keepdims layout; see `quantize_params`.
"""

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from MaxText.config.choices import STORED_QUANTIZATION, KVQuantDType, Quantization

MODES = tuple(m.value for m in Quantization)
STORED_MODES = STORED_QUANTIZATION  # modes whose weights can be stored quantized in a checkpoint
KV_DTYPES = tuple(d.value for d in KVQuantDType)
INT8_MAX = 127.0
FP8_DTYPE = jnp.float8_e4m3fn
FP8_MAX = float(jnp.finfo(FP8_DTYPE).max)  # 448


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """What a layer needs to know: the mode, and whether its weights arrive already quantized."""

    mode: str = ""
    stored: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"quantization={self.mode!r}: expected one of {MODES}")
        if self.stored and self.mode not in STORED_MODES:
            raise ValueError(f"stored weights need quantization in {STORED_MODES}; got {self.mode!r}")


def _scale(amax, qmax):
    # An all-zero slice gets scale 1 so that dequantizing it gives zeros rather than NaN.
    return jnp.where(amax > 0, amax / qmax, 1.0).astype(jnp.float32)


def int8_quantize(x, axes):
    """Symmetric int8 over `axes` (one scale per slice): (q int8, scale float32 with `axes` kept as 1)."""
    x = x.astype(jnp.float32)
    scale = _scale(jnp.max(jnp.abs(x), axis=axes, keepdims=True), INT8_MAX)
    return jnp.clip(jnp.round(x / scale), -INT8_MAX, INT8_MAX).astype(jnp.int8), scale


def fp8_quantize(x, axes):
    """float8_e4m3fn with one scale for the whole tensor, shaped [1] * ndim (broadcasts like int8's)."""
    x = x.astype(jnp.float32)
    scale = _scale(jnp.max(jnp.abs(x)), FP8_MAX)
    del axes  # per tensor: the scale is 1 on every axis
    return jnp.clip(x / scale, -FP8_MAX, FP8_MAX).astype(FP8_DTYPE), jnp.reshape(scale, (1,) * x.ndim)


def dequantize(q, scale, dtype):
    return (q.astype(jnp.float32) * scale).astype(dtype)


def _quantized_forward(mode, dot, x, w, aux, x_axes, w_axes):
    """(y, x_fq, w_fq): the quantized product and the fake-quantized operands it equals in exact math."""
    if mode == "fp8":
        xq, xs = fp8_quantize(x, x_axes)
        wq, ws = fp8_quantize(w, w_axes)
        acc = dot(xq, wq, aux, jnp.float32)
        x_fq = dequantize(xq, xs, x.dtype)
    elif mode == "int8":
        xq, xs = int8_quantize(x, x_axes)
        wq, ws = int8_quantize(w, w_axes)
        acc = dot(xq, wq, aux, jnp.int32).astype(jnp.float32)
        x_fq = dequantize(xq, xs, x.dtype)
    else:  # int8w: the activation stays float, the weight is dequantized into the activation dtype
        wq, ws = int8_quantize(w, w_axes)
        xs = jnp.ones([1 if a in x_axes else n for a, n in enumerate(x.shape)], jnp.float32)
        acc = dot(x, wq.astype(x.dtype), aux, None).astype(jnp.float32)
        x_fq = x
    y = (acc * dot(xs, ws, aux, jnp.float32)).astype(x.dtype)
    return y, x_fq, dequantize(wq, ws, w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 5, 6))
def _ste_dot(mode, dot, x, w, aux, x_axes, w_axes):
    return _quantized_forward(mode, dot, x, w, aux, x_axes, w_axes)[0]


def _ste_fwd(mode, dot, x, w, aux, x_axes, w_axes):
    y, x_fq, w_fq = _quantized_forward(mode, dot, x, w, aux, x_axes, w_axes)
    return y, (x_fq, w_fq, aux)


def _ste_bwd(mode, dot, x_axes, w_axes, res, g):
    del mode, x_axes, w_axes
    x_fq, w_fq, aux = res
    _, vjp = jax.vjp(lambda a, b: dot(a, b, aux, None), x_fq, w_fq)
    dx, dw = vjp(g)
    return dx, dw, None


_ste_dot.defvjp(_ste_fwd, _ste_bwd)


def quantized_dot(
    quant: QuantConfig,
    dot: Callable,
    x,
    w,
    x_axes: tuple,
    w_axes: tuple,
    aux=None,
    w_scale: Optional[jax.Array] = None,
):
    """x (contracted over x_axes) . w (over w_axes) under `quant`; `dot(a, b, aux, preferred_element_type)`
    is the caller's float contraction (preferred_element_type None = its natural dtype).

    With quant.stored, `w` is already int8 and `w_scale` its keepdims scale; there is no gradient then.
    """
    if not quant.mode:
        return dot(x, w, aux, None)
    if not quant.stored:
        return _ste_dot(quant.mode, dot, x, w, aux, tuple(x_axes), tuple(w_axes))
    if quant.mode == "int8":
        xq, xs = int8_quantize(x, x_axes)
        acc = dot(xq, w, aux, jnp.int32).astype(jnp.float32)
    else:
        xs = jnp.ones([1 if a in x_axes else n for a, n in enumerate(x.shape)], jnp.float32)
        acc = dot(x, w.astype(x.dtype), aux, None).astype(jnp.float32)
    return (acc * dot(xs, w_scale, aux, jnp.float32)).astype(x.dtype)


# ---- KV cache ----


def quantize_kv(x):
    """k or v [..., H] -> (int8 [..., H], scale float32 [...]): one scale per token and head."""
    q, scale = int8_quantize(x, (-1,))
    return q, scale[..., 0]


def dequantize_kv(q, scale, dtype):
    """The inverse of quantize_kv, in `dtype`."""
    return dequantize(q, scale[..., None], dtype)


def quant_config(cfg) -> QuantConfig:
    """The QuantConfig of a ModelConfig (its quantization and checkpoint_is_quantized fields)."""
    return QuantConfig(cfg.quantization, cfg.checkpoint_is_quantized)


def quantize_params(params: dict, target: dict) -> dict:
    """Float params -> the tree of `target` (the abstract params of a checkpoint_is_quantized model): each
    int8 `kernel` is quantized per output channel beside its `kernel_scale`, every other leaf is kept.

    The reduced axes are those where the scale has size 1 and the kernel does not (the input axes; a
    scanned stack's layer axis keeps its size), so one rule serves every layout.
    """
    out = {}
    for name, want in target.items():
        if isinstance(want, dict):
            out[name] = quantize_params(params[name], want)
        elif name == "kernel" and want.dtype == jnp.int8:
            scale_shape = target["kernel_scale"].shape
            axes = tuple(a for a, (k, s) in enumerate(zip(want.shape, scale_shape)) if s == 1 and k != 1)
            out["kernel"], out["kernel_scale"] = int8_quantize(params["kernel"], axes)
        elif name != "kernel_scale":
            out[name] = params[name]
    return out
