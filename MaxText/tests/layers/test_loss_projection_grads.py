"""The projections that feed the loss (DenseGeneral, tied Embed.attend) use dense_dot, whose hand-written
backward must equal plain autodiff of jax.lax.dot_general / einsum: values and gradients, float32, fixed
tolerances."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText.layers.embeddings import Embed
from MaxText.layers.linears import DenseGeneral, dense_dot
from MaxText.layers.quantizations import QuantConfig

HIGHEST = jax.lax.Precision.HIGHEST


@pytest.mark.parametrize(
    "x_shape,kernel_shape,num_in",
    [
        ((4, 6, 8), (8, 16), 1),  # [B, T, D] x [D, F]
        ((2, 5, 3, 4), (3, 4, 7), 2),  # [B, T, N, H] x [N, H, D] (attention out)
        ((6, 8), (8, 2, 5), 1),  # [T, D] x [D, N, H] (attention q/k/v)
    ],
)
def test_dense_dot_matches_dot_general(x_shape, kernel_shape, num_in):
    kx, kk, kg = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, x_shape, jnp.float32)
    kernel = jax.random.normal(kk, kernel_shape, jnp.float32)
    contract = (tuple(range(x.ndim - num_in, x.ndim)), tuple(range(num_in)))

    def plain(a, b):
        return jax.lax.dot_general(a, b, (contract, ((), ())), precision=HIGHEST)

    def custom(a, b):
        return dense_dot(a, b, num_in, HIGHEST)

    np.testing.assert_allclose(jax.jit(custom)(x, kernel), plain(x, kernel), rtol=1e-6, atol=1e-6)
    cotangent = jax.random.normal(kg, plain(x, kernel).shape, jnp.float32)
    got = jax.jit(lambda a, b: jax.vjp(custom, a, b)[1](cotangent))(x, kernel)
    want = jax.vjp(plain, x, kernel)[1](cotangent)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_dense_dot_keeps_bfloat16_dtypes():
    x = jax.random.normal(jax.random.key(0), (3, 8), jnp.bfloat16)
    kernel = jax.random.normal(jax.random.key(1), (8, 4), jnp.bfloat16)
    y, vjp = jax.vjp(lambda a, b: dense_dot(a, b, 1), x, kernel)
    dx, dk = vjp(jnp.ones_like(y))
    assert y.dtype == dx.dtype == dk.dtype == jnp.bfloat16


def test_dense_general_non_trailing_axes_match_einsum():
    """axis=(1, 2) of [B, N, H, T]: contracted axes that are not trailing are moved, not mis-contracted."""
    x = jax.random.normal(jax.random.key(4), (2, 3, 4, 5), jnp.float32)
    layer = DenseGeneral(6, axis=(1, 2), precision=HIGHEST)
    params = nn.unbox(layer.init(jax.random.key(5), x))
    kernel = params["params"]["kernel"]
    assert kernel.shape == (3, 4, 6)
    want = jnp.einsum("bnht,nhf->btf", x, kernel, precision=HIGHEST)
    np.testing.assert_allclose(layer.apply(params, x), want, rtol=1e-5, atol=1e-5)
    g_got = jax.grad(lambda p: jnp.sum(layer.apply(p, x) ** 2))(params)["params"]["kernel"]
    g_want = jax.grad(lambda k: jnp.sum(jnp.einsum("bnht,nhf->btf", x, k, precision=HIGHEST) ** 2))(kernel)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-5, atol=1e-5)


def test_tied_logits_match_einsum_value_and_gradients():
    """Embed.attend (tied output logits) == einsum('btd,vd->btv') and its autodiff gradients."""
    embed = Embed(num_embeddings=11, features=6, precision=HIGHEST)
    x = jax.random.normal(jax.random.key(6), (2, 3, 6), jnp.float32)
    params = nn.unbox(embed.init(jax.random.key(7), jnp.zeros((1, 1), jnp.int32)))
    table = params["params"]["embedding"]
    weights = jax.random.normal(jax.random.key(8), (2, 3, 11), jnp.float32)

    def got(p, a):
        return jnp.sum(weights * embed.apply(p, a, method=Embed.attend))

    def want(e, a):
        return jnp.sum(weights * jnp.einsum("btd,vd->btv", a, e, precision=HIGHEST))

    np.testing.assert_allclose(got(params, x), want(table, x), rtol=1e-5, atol=1e-5)
    dp, dx = jax.grad(got, argnums=(0, 1))(params, x)
    de_want, dx_want = jax.grad(want, argnums=(0, 1))(table, x)
    np.testing.assert_allclose(dp["params"]["embedding"], de_want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quant", ["", "int8"])
def test_cpu_dot_is_only_a_cpu_arrangement_of_the_plain_dot(quant):
    """DenseGeneral and Embed.attend under dot="cpu" (dense_dot, one-row int8 padding: the CPU backend's
    choice) equal dot="xla" (what the TPU and GPU plans run), and only the CPU arrangement has the custom VJP
    and the padding in its program."""
    x = jax.random.normal(jax.random.key(9), (1, 1, 6), jnp.float32)  # one row: the padded int8 case
    out = {}
    for dot in ("cpu", "xla"):
        layer = DenseGeneral(5, precision=HIGHEST, quant=QuantConfig(quant), dot=dot)
        params = nn.unbox(layer.init(jax.random.key(10), x))

        def loss(p, a, layer=layer):
            return jnp.sum(layer.apply(p, a) ** 2)

        out[dot] = (layer.apply(params, x), jax.grad(loss)(params, x)["params"]["kernel"])
        forward = str(jax.make_jaxpr(layer.apply)(params, x))
        assert ("_dense_dot_bwd" in forward) == (dot == "cpu" and not quant), (dot, quant)
        if quant == "int8":
            assert ("concatenate" in forward) == (dot == "cpu")
    np.testing.assert_array_equal(out["cpu"][0], out["xla"][0])
    np.testing.assert_allclose(out["cpu"][1], out["xla"][1], rtol=1e-6, atol=1e-6)
    embed = {dot: Embed(num_embeddings=11, features=6, precision=HIGHEST, dot=dot) for dot in ("cpu", "xla")}
    params = nn.unbox(embed["cpu"].init(jax.random.key(7), jnp.zeros((1, 1), jnp.int32)))
    got = {d: e.apply(params, x, method=Embed.attend) for d, e in embed.items()}
    np.testing.assert_allclose(got["cpu"], got["xla"], rtol=1e-6, atol=1e-6)
