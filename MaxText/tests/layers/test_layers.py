"""Each layer against a naive NumPy reference; masks; flash against dot_product (forward and gradient)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText.kernels import AttentionSpec, attention
from MaxText.kernels.masks import allowed
from MaxText.layers.attention import Attention
from MaxText.layers.embeddings import RopeConfig, apply_rope
from MaxText.layers.linears import MlpBlock
from MaxText.layers.normalizations import RMSNorm

HIGHEST = jax.lax.Precision.HIGHEST


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def test_rmsnorm_matches_naive():
    x = np.random.default_rng(0).normal(size=(2, 3, 16)).astype(np.float32)
    for offset in (0.0, 1.0):
        layer = RMSNorm(epsilon=1e-6, scale_offset=offset)
        params = jax.tree.map(lambda p: p + 0.3, _np(layer.init(jax.random.key(0), x)))
        scale = (
            params["params"]["scale"].value
            if hasattr(params["params"]["scale"], "value")
            else params["params"]["scale"]
        )
        want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * (offset + scale)
        np.testing.assert_allclose(layer.apply(params, x), want, rtol=1e-5, atol=1e-6)


def _naive_inv_freq(h, theta, llama3=None):
    inv = 1.0 / theta ** (np.arange(0, h, 2, dtype=np.float64) / h)
    if llama3 is None:
        return inv
    factor, low, high, old = llama3
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(f)
        elif wavelen > old / low:
            out.append(f / factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return np.array(out)


@pytest.mark.parametrize("llama3", [None, (8.0, 1.0, 4.0, 64)])
def test_rope_matches_naive_rotate_half(llama3):
    b, t, n, h = 2, 40, 3, 16
    rng = np.random.default_rng(1)
    x = rng.normal(size=(b, t, n, h)).astype(np.float32)
    pos = rng.integers(0, 500, size=(b, t))
    if llama3:
        rope = RopeConfig(h, 10000.0, "llama3", *llama3)
    else:
        rope = RopeConfig(h, 10000.0)
    inv = _naive_inv_freq(h, 10000.0, llama3)
    ang = pos[..., None] * inv  # [b, t, h/2]
    cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
    x1, x2 = x[..., : h // 2], x[..., h // 2 :]
    want = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    np.testing.assert_allclose(apply_rope(jnp.asarray(x), jnp.asarray(pos), rope), want, atol=2e-4)


def test_gated_mlp_matches_naive():
    x = np.random.default_rng(2).normal(size=(2, 5, 8)).astype(np.float32)
    layer = MlpBlock(mlp_dim=12, activations=("silu", "linear"), precision=HIGHEST)
    variables = layer.init(jax.random.key(1), x)
    p = jax.tree.map(np.asarray, jax.tree.map(lambda v: v, variables["params"]))
    p = {k: np.asarray(v["kernel"].value) for k, v in p.items()}
    h0 = x @ p["wi_0"]
    want = (h0 / (1 + np.exp(-h0)) * (x @ p["wi_1"])) @ p["wo"]
    np.testing.assert_allclose(layer.apply(variables, x), want, rtol=1e-5, atol=1e-5)


def _naive_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, scale, window=0, cap=0.0):
    """Loops over batch, heads and queries. q [B,T,N,H], k/v [B,S,K,H]."""
    b, t, n, _ = q.shape
    g = n // k.shape[2]
    out = np.zeros_like(q, dtype=np.float64)
    for bi in range(b):
        for hi in range(n):
            for i in range(t):
                s = k[bi, :, hi // g] @ q[bi, i, hi] * scale
                if cap:
                    s = cap * np.tanh(s / cap)
                ok = (k_seg[bi] == q_seg[bi, i]) & (k_pos[bi] <= q_pos[bi, i])
                if window:
                    ok &= q_pos[bi, i] - k_pos[bi] < window
                s = np.where(ok, s, -1e30)
                w = np.exp(s - s.max())
                out[bi, i, hi] = (w / w.sum()) @ v[bi, :, hi // g]
    return out


def _packed_inputs(b=2, t=24, n=4, kh=2, h=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, t, n, h)).astype(np.float32)
    k = rng.normal(size=(b, t, kh, h)).astype(np.float32)
    v = rng.normal(size=(b, t, kh, h)).astype(np.float32)
    seg = np.array([[1] * 10 + [2] * 14, [1] * 20 + [0] * 4])
    pos = np.array([list(range(10)) + list(range(14)), list(range(20)) + [0] * 4])
    return q, k, v, pos, seg


def test_mask_matches_brute_force():
    _, _, _, pos, seg = _packed_inputs()
    for window in (0, 3):
        got = np.asarray(
            allowed(jnp.asarray(pos), jnp.asarray(pos), jnp.asarray(seg), jnp.asarray(seg), window)
        )
        for b in range(2):
            for i in range(24):
                for j in range(24):
                    want = seg[b, i] == seg[b, j] and pos[b, j] <= pos[b, i]
                    want = want and (window == 0 or pos[b, i] - pos[b, j] < window)
                    assert got[b, 0, 0, i, j] == want


@pytest.mark.parametrize("kernel", ["dot_product", "flash"])
@pytest.mark.parametrize("window, cap, kh", [(0, 0.0, 2), (5, 0.0, 1), (0, 2.5, 4)])
def test_kernels_match_naive(kernel, window, cap, kh):
    q, k, v, pos, seg = _packed_inputs(kh=kh)
    spec = AttentionSpec(
        kernel=kernel, scale=0.3, sliding_window=window, soft_cap=cap, precision=HIGHEST, block_size=7
    )
    got = attention(*map(jnp.asarray, (q, k, v, pos, pos, seg, seg)), spec)
    want = _naive_attention(q, k, v, pos, pos, seg, seg, 0.3, window, cap)
    real = seg != 0  # fully padded queries see only padding; their outputs are unused
    np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=2e-5)


@pytest.mark.parametrize("window, cap, block", [(0, 0.0, 8), (6, 0.0, 5), (0, 3.0, 24), (0, 0.0, 64)])
def test_flash_gradient_matches_dot_product(window, cap, block):
    q, k, v, pos, seg = map(jnp.asarray, _packed_inputs(kh=2, seed=3))
    weights = jax.random.normal(jax.random.key(0), q.shape)

    def loss(kernel, q, k, v):
        spec = AttentionSpec(
            kernel=kernel,
            scale=0.35,
            sliding_window=window,
            soft_cap=cap,
            precision=HIGHEST,
            block_size=block,
        )
        return (attention(q, k, v, pos, pos, seg, seg, spec) * weights).sum()

    ref = jax.grad(lambda *a: loss("dot_product", *a), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(lambda *a: loss("flash", *a), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(loss("flash", q, k, v), loss("dot_product", q, k, v), rtol=1e-5)


def test_attention_layer_matches_naive():
    b, t, d, n, kh, h = 2, 12, 16, 4, 2, 8
    rng = np.random.default_rng(4)
    x = rng.normal(size=(b, t, d)).astype(np.float32)
    pos = np.broadcast_to(np.arange(t), (b, t))
    seg = np.ones((b, t), np.int32)
    layer = Attention(n, kh, h, rope=RopeConfig(h, 10000.0), precision=HIGHEST)
    variables = layer.init(jax.random.key(2), x, pos, seg, "train")
    out, cache = layer.apply(variables, x, pos, seg, "train")
    assert cache is None
    p = {name: np.asarray(v["kernel"].value) for name, v in variables["params"].items()}
    q = np.einsum("btd,dnh->btnh", x, p["query"])
    k = np.einsum("btd,dnh->btnh", x, p["key"])
    v = np.einsum("btd,dnh->btnh", x, p["value"])
    rope = RopeConfig(h, 10000.0)
    q, k = np.asarray(apply_rope(q, pos, rope)), np.asarray(apply_rope(k, pos, rope))
    att = _naive_attention(q, k, v, pos, pos, seg, seg, h**-0.5)
    want = np.einsum("btnh,nhd->btd", att, p["out"])
    np.testing.assert_allclose(out, want, atol=1e-5)


@pytest.mark.parametrize("across_heads", [False, True])
def test_attention_qk_norm_matches_naive(across_heads):
    """qk-norm before RoPE: per head over H (scales [H]) or over the whole projection, N*H for q and K*H for
    k (qk_norm_across_heads, OLMo 3)."""
    b, t, d, n, kh, h, eps = 2, 12, 16, 4, 2, 8, 1e-6
    rng = np.random.default_rng(5)
    x = rng.normal(size=(b, t, d)).astype(np.float32)
    pos = np.broadcast_to(np.arange(t), (b, t))
    seg = np.ones((b, t), np.int32)
    rope = RopeConfig(h, 10000.0)
    layer = Attention(n, kh, h, rope=rope, precision=HIGHEST, qk_norm=True, qk_norm_epsilon=eps,
                      qk_norm_across_heads=across_heads)  # fmt: skip
    variables = jax.tree.map(
        lambda p: p + 0.3 * rng.normal(size=p.shape).astype(np.float32),
        _np(layer.init(jax.random.key(2), x, pos, seg, "train")),
    )
    out, _ = layer.apply(variables, x, pos, seg, "train")
    p = {
        name: {k: np.asarray(getattr(w, "value", w)) for k, w in v.items()}
        for name, v in variables["params"].items()
    }
    assert p["query_norm"]["scale"].shape == ((n * h,) if across_heads else (h,))

    def normed(y, scale):  # y [B, T, heads, H]
        flat = y.reshape(b, t, -1) if across_heads else y
        flat = flat / np.sqrt((flat**2).mean(-1, keepdims=True) + eps) * scale
        return flat.reshape(y.shape)

    q = normed(np.einsum("btd,dnh->btnh", x, p["query"]["kernel"]), p["query_norm"]["scale"])
    k = normed(np.einsum("btd,dnh->btnh", x, p["key"]["kernel"]), p["key_norm"]["scale"])
    v = np.einsum("btd,dnh->btnh", x, p["value"]["kernel"])
    q, k = np.asarray(apply_rope(q, pos, rope)), np.asarray(apply_rope(k, pos, rope))
    want = np.einsum(
        "btnh,nhd->btd", _naive_attention(q, k, v, pos, pos, seg, seg, h**-0.5), p["out"]["kernel"]
    )
    np.testing.assert_allclose(out, want, atol=2e-5)
