"""Flash attention as Pallas kernels, forward and backward, written for the GPU (Triton) lowering.

Axis legend: B batch, T queries, S keys, N query heads, K kv heads, G = N / K, H head dim (padded to Hp, a
power of two >= 16, as Triton's dot needs), C block size (queries and keys), Tp / Sp = T / S padded to
multiples of C.

Forward: one program per (row, query head, query block) walks the key blocks with FlashAttention's running
max / normaliser / accumulator and writes the output and the log-sum-exp. Backward (FlashAttention-2):
one kernel per key block accumulates dK and dV over the query blocks, another per query block accumulates
dQ over the key blocks; both recompute the scores from the saved log-sum-exp. GQA: each query head reads
kv head n // G; dK and dV come out per query head and are summed over G afterwards.

The mask is the interface's own (masks.visible on positions and segment ids), so arbitrary packed positions,
sliding windows and soft caps are honoured exactly. The positions are data, so which (query block, key
block) tiles are fully masked is decided at run time from the tiles' position and segment ranges
(_may_see): causal training skips about half the tiles, a sliding window most of them. A query that sees
no key at all (never the case when queries and keys are the same tokens) gets output 0.

On GPU the kernels compile through Triton; elsewhere `interpret=True` runs the same kernels through
Pallas's interpreter (the CPU parity tests).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from MaxText.kernels.masks import MASK_VALUE, AttentionSpec, cap_scores, visible

_SQ = pl.squeezed
# Position of padded tokens: after every real one, so padding never widens a key block's position range
# downwards (which would stop causal tiles from being skipped); padded queries see padded keys only.
_LAST = jnp.iinfo(jnp.int32).max


def _pow2_at_least(x: int, low: int) -> int:
    return max(low, 1 << (max(x, 1) - 1).bit_length())


def _tile_scores(q, k, qp, qs, kp, ks, spec: AttentionSpec):
    """q [Cq, Hp] against k [Ck, Hp] -> (raw scaled scores, masked + capped scores, mask), each [Cq, Ck]."""
    raw = jnp.dot(q, k.T, precision=spec.precision, preferred_element_type=jnp.float32) * spec.scale
    mask = visible(qp[:, None], kp[None, :], qs[:, None], ks[None, :], spec.sliding_window)
    return raw, jnp.where(mask, cap_scores(raw, spec.soft_cap), MASK_VALUE), mask


def _may_see(qp, qs, kp, ks, sliding_window: int):
    """False only when no query of the tile can see any key of the tile (from their ranges alone): every
    key after every query, every key out of every query's window, or disjoint segment ranges."""
    ok = (kp.min() <= qp.max()) & (ks.min() <= qs.max()) & (qs.min() <= ks.max())
    if sliding_window > 0:
        ok &= qp.min() - kp.max() < sliding_window
    return ok


def _score_grad(p, dp, delta, raw, mask, spec: AttentionSpec):
    """dL/d(raw q.k) of one tile from the probabilities p, dL/dp and D = rowsum(dO * O)."""
    ds = p * (dp - delta[:, None])
    if spec.soft_cap > 0:
        ds = ds * (1.0 - jnp.square(jnp.tanh(raw / spec.soft_cap)))
    return jnp.where(mask, ds, 0.0) * spec.scale


def _fwd_kernel(q_ref, k_ref, v_ref, qp_ref, qs_ref, kp_ref, ks_ref, o_ref, lse_ref, *, spec, block):
    q = q_ref[...].astype(jnp.float32)
    qp, qs = qp_ref[...], qs_ref[...]

    def update(keys, carry):
        m, l, acc = carry
        k = k_ref[keys, :].astype(jnp.float32)
        _, s, _ = _tile_scores(q, k, qp, qs, kp_ref[keys], ks_ref[keys], spec)
        m_new = jnp.maximum(m, s.max(axis=1))
        p = jnp.exp(s - m_new[:, None])
        correction = jnp.exp(m - m_new)
        v = v_ref[keys, :].astype(jnp.float32)
        acc = acc * correction[:, None] + jnp.dot(p, v, precision=spec.precision)
        return m_new, l * correction + p.sum(axis=1), acc

    def visit(j, carry):
        keys = pl.ds(j * block, block)
        seen = _may_see(qp, qs, kp_ref[keys], ks_ref[keys], spec.sliding_window)
        return jax.lax.cond(seen, functools.partial(update, keys), lambda c: c, carry)

    c, hp = q.shape
    init = (
        jnp.full((c,), -jnp.inf, jnp.float32),
        jnp.zeros((c,), jnp.float32),
        jnp.zeros((c, hp), jnp.float32),
    )
    m, l, acc = jax.lax.fori_loop(0, k_ref.shape[0] // block, visit, init)
    # l = 0 only for a query whose every key block was skipped: output 0, and lse 0 so that the backward's
    # exp(masked score - lse) is 0 rather than exp(+inf) wherever it meets that query.
    seen = l > 0
    o_ref[...] = (acc / jnp.where(seen, l, 1.0)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)


def _dkv_kernel(
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qp_ref, qs_ref, kp_ref, ks_ref, dk_ref, dv_ref, *, spec, block
):  # fmt: skip
    k = k_ref[...].astype(jnp.float32)
    v = v_ref[...].astype(jnp.float32)
    kp, ks = kp_ref[...], ks_ref[...]

    def update(rows, carry):
        dk, dv = carry
        q = q_ref[rows, :].astype(jnp.float32)
        do = do_ref[rows, :].astype(jnp.float32)
        raw, s, mask = _tile_scores(q, k, qp_ref[rows], qs_ref[rows], kp, ks, spec)
        p = jnp.exp(s - lse_ref[rows][:, None])
        dv = dv + jnp.dot(p.T, do, precision=spec.precision)
        dp = jnp.dot(do, v.T, precision=spec.precision)
        ds = _score_grad(p, dp, delta_ref[rows], raw, mask, spec)
        return dk + jnp.dot(ds.T, q, precision=spec.precision), dv

    def visit(i, carry):
        rows = pl.ds(i * block, block)
        seen = _may_see(qp_ref[rows], qs_ref[rows], kp, ks, spec.sliding_window)
        return jax.lax.cond(seen, functools.partial(update, rows), lambda c: c, carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(0, q_ref.shape[0] // block, visit, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qp_ref, qs_ref, kp_ref, ks_ref, dq_ref, *, spec, block
):  # fmt: skip
    q = q_ref[...].astype(jnp.float32)
    do = do_ref[...].astype(jnp.float32)
    lse, delta, qp, qs = lse_ref[...], delta_ref[...], qp_ref[...], qs_ref[...]

    def update(keys, dq):
        k = k_ref[keys, :].astype(jnp.float32)
        raw, s, mask = _tile_scores(q, k, qp, qs, kp_ref[keys], ks_ref[keys], spec)
        p = jnp.exp(s - lse[:, None])
        dp = jnp.dot(do, v_ref[keys, :].astype(jnp.float32).T, precision=spec.precision)
        ds = _score_grad(p, dp, delta, raw, mask, spec)
        return dq + jnp.dot(ds, k, precision=spec.precision)

    def visit(j, dq):
        keys = pl.ds(j * block, block)
        seen = _may_see(qp, qs, kp_ref[keys], ks_ref[keys], spec.sliding_window)
        return jax.lax.cond(seen, functools.partial(update, keys), lambda c: c, dq)

    dq = jax.lax.fori_loop(0, k_ref.shape[0] // block, visit, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = dq.astype(dq_ref.dtype)


class _Call:
    """Block specs and pallas_call settings shared by the three kernels for one problem shape."""

    def __init__(self, qt, kt, block: int, interpret: bool):
        _, self.n, self.tp, self.hp = qt.shape
        self.g = self.n // kt.shape[1]
        self.sp, self.block, self.interpret = kt.shape[2], block, interpret

    def call(self, kernel, grid_len, out_shape, in_specs, out_specs, *args):
        b = args[0].shape[0]
        extra = {}
        if not self.interpret:
            from jax.experimental.pallas import triton as plgpu  # pylint: disable=import-outside-toplevel

            extra["compiler_params"] = plgpu.CompilerParams(num_warps=4, num_stages=2)
        return pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=(b, self.n, grid_len),
            in_specs=in_specs,
            out_specs=out_specs,
            interpret=self.interpret,
            **extra,
        )(*args)

    # Block specs: "tile" = one block along T or S selected by the grid's last index; "whole" = all of it.
    def head_tile(self):  # one block of T (or of S, for per-query-head dK/dV)
        return pl.BlockSpec((_SQ, _SQ, self.block, self.hp), lambda b, n, i: (b, n, i, 0))

    def q_whole(self):
        return pl.BlockSpec((_SQ, _SQ, self.tp, self.hp), lambda b, n, i: (b, n, 0, 0))

    def kv_tile(self):
        return pl.BlockSpec((_SQ, _SQ, self.block, self.hp), lambda b, n, i: (b, n // self.g, i, 0))

    def kv_whole(self):
        return pl.BlockSpec((_SQ, _SQ, self.sp, self.hp), lambda b, n, i: (b, n // self.g, 0, 0))

    def row_tile(self):  # [B, N, Tp] statistics
        return pl.BlockSpec((_SQ, _SQ, self.block), lambda b, n, i: (b, n, i))

    def row_whole(self):
        return pl.BlockSpec((_SQ, _SQ, self.tp), lambda b, n, i: (b, n, 0))

    def seq_tile(self):  # [B, L] positions / segment ids
        return pl.BlockSpec((_SQ, self.block), lambda b, n, i: (b, i))

    def seq_whole(self, length):
        return pl.BlockSpec((_SQ, length), lambda b, n, i: (b, 0))


def _forward(spec, block, interpret, qt, kt, vt, q_pos, q_seg, k_pos, k_seg):
    c = _Call(qt, kt, block, interpret)
    b = qt.shape[0]
    out_shape = (jax.ShapeDtypeStruct(qt.shape, qt.dtype), jax.ShapeDtypeStruct((b, c.n, c.tp), jnp.float32))
    return c.call(
        functools.partial(_fwd_kernel, spec=spec, block=block),
        c.tp // block,
        out_shape,
        [c.head_tile(), c.kv_whole(), c.kv_whole(), c.seq_tile(), c.seq_tile(), c.seq_whole(c.sp), c.seq_whole(c.sp)],
        (c.head_tile(), c.row_tile()),
        qt, kt, vt, q_pos, q_seg, k_pos, k_seg,
    )  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _flash(spec, block, interpret, qt, kt, vt, q_pos, q_seg, k_pos, k_seg):
    return _forward(spec, block, interpret, qt, kt, vt, q_pos, q_seg, k_pos, k_seg)[0]


def _flash_fwd(spec, block, interpret, qt, kt, vt, q_pos, q_seg, k_pos, k_seg):
    out, lse = _forward(spec, block, interpret, qt, kt, vt, q_pos, q_seg, k_pos, k_seg)
    return out, (qt, kt, vt, q_pos, q_seg, k_pos, k_seg, out, lse)


def _flash_bwd(spec, block, interpret, res, d_out):
    qt, kt, vt, q_pos, q_seg, k_pos, k_seg, out, lse = res
    c = _Call(qt, kt, block, interpret)
    b, kh = kt.shape[:2]
    # D_i = sum_h dO_i * O_i: the softmax Jacobian's correction term, one per query.
    delta = jnp.einsum("bnth,bnth->bnt", d_out.astype(jnp.float32), out.astype(jnp.float32))
    args = (qt, kt, vt, d_out, lse, delta, q_pos, q_seg, k_pos, k_seg)
    per_head = jax.ShapeDtypeStruct((b, c.n, c.sp, c.hp), jnp.float32)
    dk, dv = c.call(
        functools.partial(_dkv_kernel, spec=spec, block=block),
        c.sp // block,
        (per_head, per_head),
        [c.q_whole(), c.kv_tile(), c.kv_tile(), c.q_whole(), c.row_whole(), c.row_whole(),
         c.seq_whole(c.tp), c.seq_whole(c.tp), c.seq_tile(), c.seq_tile()],
        (c.head_tile(), c.head_tile()),
        *args,
    )  # fmt: skip
    dq = c.call(
        functools.partial(_dq_kernel, spec=spec, block=block),
        c.tp // block,
        jax.ShapeDtypeStruct(qt.shape, jnp.float32),
        [c.head_tile(), c.kv_whole(), c.kv_whole(), c.head_tile(), c.row_tile(), c.row_tile(),
         c.seq_tile(), c.seq_tile(), c.seq_whole(c.sp), c.seq_whole(c.sp)],
        c.head_tile(),
        *args,
    )  # fmt: skip

    def group_sum(x, like):  # per query head [B, N, Sp, Hp] -> per kv head [B, K, Sp, Hp]
        return x.reshape(b, kh, c.g, c.sp, c.hp).sum(axis=2).astype(like.dtype)

    return dq.astype(qt.dtype), group_sum(dk, kt), group_sum(dv, vt), None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad(x, axis: int, size: int, value=0):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def flash_attention_pallas(q, k, v, q_pos, k_pos, q_seg, k_seg, spec: AttentionSpec, interpret: bool = False):
    """Same contract as dot_product_attention: q [B, T, N, H], k/v [B, S, K, H] -> [B, T, N, H].

    spec.block_size (flash_block_size) is the query and key block C; Triton needs a power of two >= 16.
    T and S are padded to multiples of C (padded tokens get segment -1, which no real token has, so real
    queries never see them) and H to a power of two (zero columns add nothing to q.k and are sliced off the output).
    """
    block = spec.block_size
    if block < 16 or block & (block - 1):
        raise ValueError(
            f"attention=flash (Pallas): flash_block_size={block} must be a power of two >= 16 (Triton blocks)"
        )
    _, t, _, h = q.shape
    s = k.shape[1]
    hp = _pow2_at_least(h, 16)
    block = min(block, _pow2_at_least(max(t, s), 16))  # a short sequence needs no block longer than itself
    tp, sp = -(-t // block) * block, -(-s // block) * block

    def heads_major(x, length):  # [B, L, heads, H] -> [B, heads, Lp, Hp]
        return _pad(_pad(x, 1, length), 3, hp).transpose(0, 2, 1, 3)

    out = _flash(
        spec, block, interpret,
        heads_major(q, tp), heads_major(k, sp), heads_major(v, sp),
        _pad(q_pos, 1, tp, _LAST), _pad(q_seg, 1, tp, -1), _pad(k_pos, 1, sp, _LAST), _pad(k_seg, 1, sp, -1),
    )  # fmt: skip
    return out.transpose(0, 2, 1, 3)[:, :t, :, :h]
