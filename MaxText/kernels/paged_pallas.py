"""Paged-attention decode as a Pallas kernel: one program per (row, kv head) walks the row's pages.

Axis legend: B rows, K kv heads, G = N / K query heads per kv head, H head dim, NP pool pages, PS page size,
MP pages per row (page-table width).

Each program reads its row's page table and position p, visits only pages 0 .. p // PS (later pages hold
nothing it may see), and keeps FlashAttention's running max / normaliser / accumulator across pages, so no
[S] score vector or gathered copy of the row's cache is ever built. Same mask and score transform as every
kernel: slot j is visible when j <= p (and p - j < W with a window), scores soft-capped before masking.

The pool is passed whole (no BlockSpec tiling) and indexed by page inside the kernel. On GPU (compiled
through Triton) that is pointer arithmetic into the pool in HBM, one [PS, H] page loaded per step; on CPU
the kernel runs with `interpret=True`. TPU would need a variant that prefetches the page table as scalars
and DMAs one page at a time into VMEM; it is not written, so the kernel plan (kernels/plan.py) uses the reference there.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from MaxText.kernels.masks import MASK_VALUE, AttentionSpec, cap_scores, visible


def _kernel(table_ref, pos_ref, q_ref, k_ref, v_ref, o_ref, *, spec: AttentionSpec, page_size: int):
    b, kh = pl.program_id(0), pl.program_id(1)
    q = q_ref[0, 0].astype(jnp.float32)  # [G, H]
    pos = pos_ref[b]
    g, h = q.shape

    def visit(j, carry):
        m, l, acc = carry
        page = table_ref[b, j]
        k = k_ref[page, :, kh, :].astype(jnp.float32)  # [PS, H]
        v = v_ref[page, :, kh, :].astype(jnp.float32)
        # Broadcast-and-sum instead of dot: Triton's dot needs every dimension >= 16, and G (query heads
        # per kv head) is often 1-8. A decode step is memory-bound, so this costs nothing that matters.
        s = cap_scores((q[:, None, :] * k[None]).sum(axis=-1) * spec.scale, spec.soft_cap)  # [G, PS]
        slot = j * page_size + jax.lax.broadcasted_iota(jnp.int32, (1, page_size), 1)
        s = jnp.where(visible(pos, slot, 0, 0, spec.sliding_window), s, MASK_VALUE)  # one segment per row
        m_new = jnp.maximum(m, s.max(axis=-1, keepdims=True))
        p = jnp.exp(s - m_new)
        correction = jnp.exp(m - m_new)
        l = l * correction + p.sum(axis=-1, keepdims=True)
        acc = acc * correction + (p[:, :, None] * v[None]).sum(axis=1)
        return m_new, l, acc

    init = (
        jnp.full((g, 1), -jnp.inf, jnp.float32),
        jnp.zeros((g, 1), jnp.float32),
        jnp.zeros((g, h), jnp.float32),
    )
    _, l, acc = jax.lax.fori_loop(0, pos // page_size + 1, visit, init)
    o_ref[0, 0] = (acc / l).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("spec", "interpret"))
def paged_attention_pallas(
    q, k_pages, v_pages, page_table, q_pos, spec: AttentionSpec, interpret: bool = True
):
    """Decode attention, one query per row: q [B, 1, N, H] at q_pos [B, 1] -> [B, 1, N, H].

    Same contract as paged.paged_attention_reference for T = 1 (the decode step)."""
    b, t, n, h = q.shape
    if t != 1:
        raise ValueError(f"paged_attention_pallas decodes one token per row; got {t} query tokens")
    _, page_size, kh, _ = k_pages.shape
    if not interpret and (page_size & (page_size - 1) or h & (h - 1)):
        raise ValueError(
            f"attention=paged (Pallas on GPU): kv_page_size={page_size} and head_dim={h} must be powers of two "
            "(Triton tiles)"
        )
    qg = q.reshape(b, kh, n // kh, h)
    out = pl.pallas_call(
        functools.partial(_kernel, spec=spec, page_size=page_size),
        out_shape=jax.ShapeDtypeStruct(qg.shape, q.dtype),
        grid=(b, kh),
        in_specs=[
            pl.BlockSpec(page_table.shape, lambda i, j: (0, 0)),
            pl.BlockSpec((b,), lambda i, j: (0,)),
            pl.BlockSpec((1, 1, n // kh, h), lambda i, j: (i, j, 0, 0)),
            pl.BlockSpec(k_pages.shape, lambda i, j: (0, 0, 0, 0)),
            pl.BlockSpec(v_pages.shape, lambda i, j: (0, 0, 0, 0)),
        ],
        out_specs=pl.BlockSpec((1, 1, n // kh, h), lambda i, j: (i, j, 0, 0)),
        interpret=interpret,
        # Compiled: the Triton lowering (Pallas's other GPU backend, Mosaic GPU, wants warpgroup-sized
        # copies that one head's [G, H] tile is not).
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=4, num_stages=2),
    )(page_table, q_pos[:, 0], qg, k_pages, v_pages)
    return out.reshape(b, 1, n, h)
