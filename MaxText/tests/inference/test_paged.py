"""Paged KV cache: decode through pages equals the contiguous cache and the full forward pass; pages are
reused without leaking state; a full pool refuses admissions instead of corrupting anyone."""

import jax.numpy as jnp
import numpy as np
import pytest

from MaxText.inference.kv_cache import (
    PagedKV,
    init_cache,
    init_paged_cache,
    with_page_table,
    without_page_table,
)
from MaxText.inference.page_manager import OutOfPages, PageManager
from MaxText.kernels import AttentionSpec, dot_product_attention
from MaxText.kernels.paged import gather_pages, paged_attention_reference
from MaxText.kernels.paged_pallas import paged_attention_pallas
from MaxText.tests.helpers import PAGE_SIZE, PAGED_B, PAGED_LENGTHS, PAGED_T, decode_ids, full_logits
from MaxText.tests.helpers import paged_cache_for, prefill_then_decode, tiny_model


@pytest.fixture(scope="module", name="tiny")
def _tiny():
    return tiny_model()


def test_paged_decode_equals_contiguous_and_forward(tiny):
    cfg, model, params = tiny
    ids = decode_ids(PAGED_B, PAGED_T)
    want = full_logits(model, params, ids)
    steps = PAGED_T - int(PAGED_LENGTHS.min())
    c_last, c_steps, _ = prefill_then_decode(
        model, params, ids, lambda c: c if c is not None else init_cache(cfg, PAGED_B, PAGED_T + 2), steps
    )
    manager = PageManager(num_pages=40, page_size=PAGE_SIZE, max_pages_per_request=4)
    manager.allocate("spacer", 5)  # so rows do not start at page 1 and pages interleave across rows
    cache_for, _ = paged_cache_for(manager, init_paged_cache(cfg, 40, PAGE_SIZE))
    p_last, p_steps, _ = prefill_then_decode(model, params, ids, cache_for, steps)
    np.testing.assert_allclose(p_last, c_last, atol=1e-6)
    np.testing.assert_allclose(p_last, want[np.arange(PAGED_B), PAGED_LENGTHS - 1], atol=2e-5)
    # The paged reference gathers each row's pages into the contiguous cache's [B, K, S, H] layout and runs
    # the same contractions, so the two decode to the last bit.
    for i in range(steps):
        for b in range(PAGED_B):
            pos = PAGED_LENGTHS[b] + i
            if pos < PAGED_T:
                np.testing.assert_array_equal(p_steps[i, b], c_steps[i, b])
                np.testing.assert_allclose(p_steps[i, b], want[b, pos], atol=2e-5)


def test_pages_reused_after_release_do_not_leak(tiny):
    cfg, model, params = tiny
    ids = decode_ids(PAGED_B, PAGED_T)
    manager = PageManager(num_pages=1 + PAGED_B * 4, page_size=PAGE_SIZE, max_pages_per_request=4)
    cache_for, first_tables = paged_cache_for(manager, init_paged_cache(cfg, 1 + PAGED_B * 4, PAGE_SIZE))
    fresh_last, fresh_steps, dirty = prefill_then_decode(model, params, ids, cache_for, 4)
    assert manager.free_pages == 0
    for b in range(PAGED_B):
        manager.release(b)
    assert manager.free_pages == PAGED_B * 4
    # Same requests again on the dirty pool, rows permuted so each lands on pages another row wrote.
    order = [3, 4, 0, 1, 2]
    tables = np.stack([manager.allocate(b, PAGED_T + 1) for b in order])
    assert set(tables.ravel()) == set(first_tables.ravel())
    assert not np.array_equal(tables, first_tables)
    reused = {"pool": without_page_table(dirty)}

    def cache_for_reused(cache):
        if cache is not None:
            reused["pool"] = without_page_table(cache)
        return with_page_table(reused["pool"], jnp.asarray(tables))

    last, steps, _ = prefill_then_decode(model, params, ids, cache_for_reused, 4)
    np.testing.assert_array_equal(last, fresh_last)
    np.testing.assert_array_equal(steps, fresh_steps)


def test_out_of_pages_refuses_admission_and_keeps_others_intact():
    manager = PageManager(num_pages=6, page_size=4, max_pages_per_request=3)
    a = manager.allocate("a", 12)
    b = manager.allocate("b", 5)
    assert not manager.can_allocate(4)
    with pytest.raises(OutOfPages, match="needs 1 pages for 4 tokens; only 0 of 5 are free"):
        manager.allocate("c", 4)
    with pytest.raises(OutOfPages, match="at most 3"):
        manager.allocate("d", 13)
    np.testing.assert_array_equal(manager.table_row("a"), a)  # refusals changed nothing
    np.testing.assert_array_equal(manager.table_row("b"), b)
    assert set(a[:3]) | set(b[:2]) == {1, 2, 3, 4, 5} and b[2] == 0
    manager.release("a")
    assert manager.can_allocate(4) and manager.free_pages == 3
    with pytest.raises(ValueError, match="already holds pages"):
        manager.allocate("b", 1)


@pytest.mark.parametrize("window,cap", [(0, 0.0), (5, 0.0), (0, 3.0)])
def test_paged_attention_kernels_match_dot_product(window, cap):
    """The reference (gather + dot_product) and the Pallas kernel (interpret=True) against each row's own
    visible slots."""
    rng = np.random.default_rng(0)
    b, n, kh, h = 3, 4, 2, 8
    spec = AttentionSpec(kernel="paged", scale=h**-0.5, sliding_window=window, soft_cap=cap)
    k_pages, v_pages = (jnp.asarray(rng.normal(size=(10, PAGE_SIZE, kh, h)), jnp.float32) for _ in "kv")
    table = jnp.asarray([[4, 2, 7], [1, 0, 0], [9, 3, 5]], jnp.int32)
    k_new = jnp.asarray(rng.normal(size=(b, 1, kh, h)), jnp.float32)
    pos = jnp.asarray([[9], [2], [11]], jnp.int32)
    pool = PagedKV(k_pages, v_pages, table).write(k_new, k_new * 2, pos)
    q = jnp.asarray(rng.normal(size=(b, 1, n, h)), jnp.float32)
    got = paged_attention_reference(q, pool.k, pool.v, table, pos, spec)
    k, v = gather_pages(pool.k, table), gather_pages(pool.v, table)
    np.testing.assert_array_equal(k[np.arange(b), pos[:, 0]], k_new[:, 0])
    np.testing.assert_array_equal(v[np.arange(b), pos[:, 0]], 2 * k_new[:, 0])
    for row in range(b):  # each row against only its own visible slots
        p = int(pos[row, 0])
        s = jnp.arange(p + 1)[None]
        want = dot_product_attention(
            q[row : row + 1], k[row : row + 1, : p + 1], v[row : row + 1, : p + 1],
            pos[row : row + 1], s, jnp.ones((1, 1), jnp.int32), jnp.ones_like(s), spec,
        )  # fmt: skip
        np.testing.assert_allclose(got[row], want[0], atol=1e-6)
    pallas = paged_attention_pallas(q, pool.k, pool.v, table, pos, spec, interpret=True)
    np.testing.assert_allclose(pallas, got, atol=1e-6)
