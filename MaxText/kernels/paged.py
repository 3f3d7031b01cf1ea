"""Paged KV cache kernels: scatter new keys/values into pages, and attention that reads through a page table.

Axis legend: B batch rows, T query length, N query heads, K kv heads, H head dim, NP pages in the pool,
PS page size (slots per page), MP pages per row (page-table width), S = MP * PS visible slots per row.

A row's token at position p lives in pool page table[b, p // PS], slot p % PS. Page 0 is the null page: it
is never handed to a request, unused table entries point at it, and writes that land there (prompt padding
past a row's pages, inactive rows) are garbage nobody reads, because a query at position p only sees slots
<= p and every such slot belongs to its own row and was written by that row first.
"""

import jax
import jax.numpy as jnp

from MaxText.kernels.masks import AttentionSpec
from MaxText.kernels.reference import dot_product_attention

NULL_PAGE = 0


def page_slots(page_table, positions, page_size: int):
    """Pool coordinates (page [B, T], slot-in-page [B, T]) of token positions [B, T] through the table."""
    width = page_table.shape[1]
    index = jnp.clip(positions // page_size, 0, width - 1)
    page = jnp.take_along_axis(page_table, index, axis=1)
    # Positions beyond the table (prompt padding of a short row) go to the null page, never a neighbour's.
    page = jnp.where(positions // page_size < width, page, NULL_PAGE)
    return page, positions % page_size


def gather_pages(pool, page_table):
    """[NP, PS, K, H] through the table [B, MP] -> each row's contiguous view [B, MP * PS, K, H]."""
    b, mp = page_table.shape
    rows = pool[page_table]  # [B, MP, PS, K, H]
    return rows.reshape((b, mp * pool.shape[1]) + pool.shape[2:])


def paged_attention_reference(
    q, k_pages, v_pages, page_table, q_pos, spec: AttentionSpec, k_scale=None, v_scale=None
):
    """q [B, T, N, H] at positions q_pos [B, T] against the rows' paged keys -> [B, T, N, H].

    The definition: gather each row's pages into a contiguous view, then dot-product attention where slot
    j holds position j (causal, window and soft cap as the spec says). An int8 pool comes with scale
    pools [NP, PS, K] (quantize_kvcache), gathered alike and multiplied in after the gather.
    """
    k = gather_pages(k_pages, page_table).astype(q.dtype)
    v = gather_pages(v_pages, page_table).astype(q.dtype)
    if k_scale is not None:
        k = k * gather_pages(k_scale, page_table)[..., None].astype(q.dtype)
        v = v * gather_pages(v_scale, page_table)[..., None].astype(q.dtype)
    b, s = k.shape[:2]
    slots = jnp.broadcast_to(jnp.arange(s, dtype=q_pos.dtype), (b, s))
    ones_q, ones_k = jnp.ones_like(q_pos), jnp.ones_like(slots)
    # Heads before slots, as the contiguous cache holds them: the decode step then runs the very same
    # contractions on both caches, so paged and contiguous decode agree to the last bit, not only to 1e-6
    # (XLA:CPU orders a [B, S, K, H] contraction's sums differently).
    # The barrier keeps XLA from folding the transpose into the contractions (which would reorder them again).
    k, v = jax.lax.optimization_barrier((jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)))
    return dot_product_attention(q, k, v, q_pos, slots, ones_q, ones_k, spec, kv_heads_major=True)
