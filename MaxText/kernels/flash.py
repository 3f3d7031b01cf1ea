"""Blockwise ("flash") attention in pure JAX: online softmax over key blocks, O(T) memory forward and back.

The forward pass keeps a running max m, normaliser l and accumulator per query and never materialises the
[T, S] score matrix; it saves only the output and the log-sum-exp. The backward pass recomputes each key
block's scores from them (FlashAttention-2's recurrences), so gradients need no [T, S] storage either.
Runs on any backend; Pallas GPU/TPU kernels plug in behind the same interface later.

Axis legend: B batch, T queries, S keys, K kv heads, G = N / K query heads per kv head, H head dim,
C key-block size, J = S / C blocks.
"""

import functools

import jax
import jax.numpy as jnp

from MaxText.kernels.masks import MASK_VALUE, AttentionSpec, allowed, cap_scores


def _blocks(x, c):
    """[B, S, ...] -> [J, B, C, ...] (S padded to a multiple of C)."""
    b, s = x.shape[:2]
    j = -(-s // c)
    return x.reshape((b, j, c) + x.shape[2:]).swapaxes(0, 1)


def _pad_keys(k, v, k_pos, k_seg, c):
    pad = (-k.shape[1]) % c
    if pad == 0:
        return k, v, k_pos, k_seg

    def widths(x):
        return [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)

    # Padded keys get segment -1, which no query has, so they are always masked.
    return (
        jnp.pad(k, widths(k)),
        jnp.pad(v, widths(v)),
        jnp.pad(k_pos, widths(k_pos)),
        jnp.pad(k_seg, widths(k_seg), constant_values=-1),
    )


def _scores(qg, kb, q_pos, kp, q_seg, ks, spec):
    """Raw scores, capped+masked scores and the mask for one key block: [B, K, G, T, C]."""
    raw = jnp.einsum(
        "btkgh,bckh->bkgtc", qg, kb, precision=spec.precision, preferred_element_type=jnp.float32
    )
    raw = raw * spec.scale
    mask = allowed(q_pos, kp, q_seg, ks, spec.sliding_window)
    return raw, jnp.where(mask, cap_scores(raw, spec.soft_cap), MASK_VALUE), mask


def _forward(spec, qg, k, v, q_pos, k_pos, q_seg, k_seg):
    b, t, kh, g, h = qg.shape
    c = spec.block_size
    k, v, k_pos, k_seg = _pad_keys(k, v, k_pos, k_seg, c)

    def step(carry, blk):
        m, l, acc = carry
        kb, vb, kp, ks = blk
        _, s, _ = _scores(qg, kb, q_pos, kp, q_seg, ks, spec)
        m_new = jnp.maximum(m, s.max(axis=-1))
        p = jnp.exp(s - m_new[..., None])
        correction = jnp.exp(m - m_new)
        l = l * correction + p.sum(axis=-1)
        pv = jnp.einsum(
            "bkgtc,bckh->bkgth", p.astype(vb.dtype), vb, precision=spec.precision,
            preferred_element_type=jnp.float32,
        )  # fmt: skip
        acc = acc * correction[..., None] + pv
        return (m_new, l, acc), None

    init = (
        jnp.full((b, kh, g, t), -jnp.inf, jnp.float32),
        jnp.zeros((b, kh, g, t), jnp.float32),
        jnp.zeros((b, kh, g, t, h), jnp.float32),
    )
    blocks = (_blocks(k, c), _blocks(v, c), _blocks(k_pos, c), _blocks(k_seg, c))
    (m, l, acc), _ = jax.lax.scan(step, init, blocks)
    out = acc / l[..., None]  # [B, K, G, T, H]
    lse = m + jnp.log(l)
    return out.transpose(0, 3, 1, 2, 4).astype(qg.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(spec, qg, k, v, q_pos, k_pos, q_seg, k_seg):
    return _forward(spec, qg, k, v, q_pos, k_pos, q_seg, k_seg)[0]


def _flash_fwd(spec, qg, k, v, q_pos, k_pos, q_seg, k_seg):
    out, lse = _forward(spec, qg, k, v, q_pos, k_pos, q_seg, k_seg)
    return out, (qg, k, v, q_pos, k_pos, q_seg, k_seg, out, lse)


def _flash_bwd(spec, res, d_out):
    qg, k, v, q_pos, k_pos, q_seg, k_seg, out, lse = res
    s_len, c = k.shape[1], spec.block_size
    kp_, vp_, kpos_, kseg_ = _pad_keys(k, v, k_pos, k_seg, c)
    d_out32 = d_out.astype(jnp.float32)
    # D_i = sum_h dO_i * O_i: the softmax Jacobian's correction term, one per query.
    delta = jnp.einsum("btkgh,btkgh->bkgt", d_out32, out.astype(jnp.float32))
    d_out_t = d_out32.transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]

    def step(dq, blk):
        kb, vb, kp, ks = blk
        raw, s, mask = _scores(qg, kb, q_pos, kp, q_seg, ks, spec)
        p = jnp.exp(s - lse[..., None])
        dv = jnp.einsum("bkgtc,bkgth->bckh", p, d_out_t, precision=spec.precision)
        dp = jnp.einsum("bkgth,bckh->bkgtc", d_out_t, vb.astype(jnp.float32), precision=spec.precision)
        ds = p * (dp - delta[..., None])
        if spec.soft_cap > 0:
            ds = ds * (1.0 - jnp.square(jnp.tanh(raw / spec.soft_cap)))
        ds = jnp.where(mask, ds, 0.0) * spec.scale
        dq = dq + jnp.einsum("bkgtc,bckh->btkgh", ds, kb.astype(jnp.float32), precision=spec.precision)
        dk = jnp.einsum("bkgtc,btkgh->bckh", ds, qg.astype(jnp.float32), precision=spec.precision)
        return dq, (dk, dv)

    blocks = (_blocks(kp_, c), _blocks(vp_, c), _blocks(kpos_, c), _blocks(kseg_, c))
    dq, (dk, dv) = jax.lax.scan(step, jnp.zeros(qg.shape, jnp.float32), blocks)

    def unblock(x):  # [J, B, C, ...] -> [B, S, ...]
        return x.swapaxes(0, 1).reshape((x.shape[1], -1) + x.shape[3:])[:, :s_len]

    return (dq.astype(qg.dtype), unblock(dk).astype(k.dtype), unblock(dv).astype(v.dtype),
            None, None, None, None)  # fmt: skip


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q, k, v, q_pos, k_pos, q_seg, k_seg, spec: AttentionSpec):
    """Same contract as dot_product_attention: q [B, T, N, H], k/v [B, S, K, H] -> [B, T, N, H]."""
    b, t, n, h = q.shape
    kh = k.shape[2]
    out = _flash(spec, q.reshape(b, t, kh, n // kh, h), k, v, q_pos, k_pos, q_seg, k_seg)
    return out.reshape(b, t, n, h)
