"""quantize_kvcache=true (kv_quant_dtype=int8): int8 K/V with one scale per token and head, contiguous and
paged; decode stays within a fixed bound of the float cache and greedy tokens through the engine equal the
float cache's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText.config import ConfigError, load_config, model_config
from MaxText.inference.batcher import Batcher
from MaxText.inference.engine import Engine, EngineConfig
from MaxText.inference.kv_cache import QuantizedKV, init_cache, init_paged_cache
from MaxText.inference.page_manager import PageManager
from MaxText.tests.helpers import BASE_YML, PAGE_SIZE, PAGED_B, PAGED_LENGTHS, PAGED_T, decode_ids
from MaxText.tests.helpers import paged_cache_for, prefill_then_decode, serve_requests, tiny_model

# Largest |logit| difference between the int8 and the float cache over every decode step of the tiny model
# (2 layers, random init). Measured 0.047, about 1% of the largest |logit|: int8 rounds each K/V entry by at
# most 1/254 of its token-and-head maximum, and two layers compound it. Bound ~2x measured.
LOGIT_ATOL = 0.1


@pytest.fixture(scope="module", name="models")
def _models():
    cfg, model, params = tiny_model()
    qcfg, qmodel, _ = tiny_model("quantize_kvcache=true")
    return cfg, model, qcfg, qmodel, params


def test_write_then_read_round_trips_within_half_a_step():
    k = jax.random.normal(jax.random.key(0), (2, 3, 2, 8)) * jnp.array([0.01, 5.0])[None, None, :, None]
    int8, scale = jnp.zeros((2, 2, 6, 8), jnp.int8), jnp.ones((2, 2, 6))  # [B, K, S, H], scales [B, K, S]
    positions = jnp.array([[0, 1, 2], [3, 4, 5]])
    cache = QuantizedKV(int8, int8, scale, scale).write(k, -k, positions)

    def tokens(x):  # the written slots as [B, T, K, H]
        return jnp.swapaxes(x, 1, 2)[jnp.arange(2)[:, None], positions]

    got_k, got_v = (tokens(x) for x in cache.read(jnp.float32))
    step = jnp.max(jnp.abs(k), axis=-1, keepdims=True) / 127  # per token and head
    assert cache.k.dtype == jnp.int8
    assert np.all(np.abs(got_k - k) <= step / 2 + 1e-7)
    np.testing.assert_allclose(got_v, -got_k)


def test_quantized_cache_decode_within_bound_contiguous_and_paged(models):
    cfg, model, qcfg, qmodel, params = models
    ids = decode_ids(PAGED_B, PAGED_T)
    steps = PAGED_T - int(PAGED_LENGTHS.min())
    f_last, f_steps, _ = prefill_then_decode(
        model, params, ids, lambda c: c if c is not None else init_cache(cfg, PAGED_B, PAGED_T + 2), steps
    )
    q_last, q_steps, qcache = prefill_then_decode(
        qmodel, params, ids, lambda c: c if c is not None else init_cache(qcfg, PAGED_B, PAGED_T + 2), steps
    )
    assert qcache["layers"].k.dtype == jnp.int8 and qcache["layers"].k_scale.shape == (
        2,
        PAGED_B,
        2,
        PAGED_T + 2,
    )
    manager = PageManager(num_pages=40, page_size=PAGE_SIZE, max_pages_per_request=4)
    manager.allocate("spacer", 5)
    cache_for, _ = paged_cache_for(manager, init_paged_cache(qcfg, 40, PAGE_SIZE))
    p_last, p_steps, _ = prefill_then_decode(qmodel, params, ids, cache_for, steps)
    np.testing.assert_array_equal(q_last, f_last)  # prefill attends to its own float K/V
    np.testing.assert_allclose(p_last, q_last, atol=1e-6)
    errs = []
    for i in range(steps):
        for b in range(PAGED_B):
            if PAGED_LENGTHS[b] + i < PAGED_T:
                np.testing.assert_allclose(p_steps[i, b], q_steps[i, b], atol=1e-5)  # same int8 values
                errs.append(np.max(np.abs(q_steps[i, b] - f_steps[i, b])))
    print(f"max |logit| error of the int8 cache: {max(errs):.4f} (max |logit| {np.abs(f_steps).max():.2f})")
    assert 0 < max(errs) < LOGIT_ATOL


def test_paged_engine_greedy_tokens_equal_the_float_cache(models):
    """Through the engine's prefill, insert (the quantized prefix with its scales) and generate; the
    contiguous cache's decode is covered above, and one engine pair keeps compile time down."""
    _, model, _, qmodel, params = models
    tokens = {}
    for name, m in (("float", model), ("int8", qmodel)):
        engine = Engine(m, params, EngineConfig(3, 24, (8, 16), paged=True, page_size=4))
        tokens[name] = serve_requests(
            Batcher(engine, eos_id=-1), [0, 3]
        )  # the greedy requests of helpers.ENGINE_PROMPTS
    assert tokens["int8"] == tokens["float"]


def test_latent_cache_refuses_quantization():
    cfg = model_config(load_config([BASE_YML, "model_name=deepseek2-16b", "quantize_kvcache=true"]))
    with pytest.raises(ConfigError, match="quantize_kvcache=true: decoder_block='deepseek2' keeps a latent"):
        init_cache(cfg, 1, 4)  # refuses before allocating anything
