"""Typed caches: one class per layout (contiguous, quantized, paged, quantized paged, latent), each built by
init_cache / init_paged_cache as the model's blocks declare, and a wrong cache for a layer refused at trace
time with a message naming both."""

import jax
import jax.numpy as jnp
import pytest

from MaxText.config import load_config, model_config
from MaxText.inference import kv_cache
from MaxText.inference.generate import decode_step
from MaxText.tests.helpers import BASE_YML, tiny_model


@pytest.fixture(scope="module", name="tiny")
def _tiny():
    return tiny_model()


def test_each_layout_is_its_own_type():
    cfg = model_config(load_config([BASE_YML, "model_name=test-tiny"]))
    qcfg = cfg.replace(quantize_kvcache=True)
    mla = model_config(load_config([BASE_YML, "model_name=deepseek2-16b", "base_num_decoder_layers=2"]))
    built = {
        "contiguous": kv_cache.init_cache(cfg, 2, 8),
        "quantized": kv_cache.init_cache(qcfg, 2, 8),
        "paged": kv_cache.init_paged_cache(cfg, 5, 4),
        "quantized_paged": kv_cache.init_paged_cache(qcfg, 5, 4),
        "latent": jax.eval_shape(lambda: kv_cache.init_cache(mla, 2, 8)),
    }
    for layout, cache in built.items():
        layers = jax.tree.leaves(cache, is_leaf=kv_cache.is_cache)
        assert layers and {layer.LAYOUT for layer in layers} == {layout}, layout
    k = built["contiguous"]["layers"].k  # [U, B, K, S, H]
    assert k.shape == (cfg.num_decoder_layers, 2, cfg.num_kv_heads, 8, cfg.head_dim)
    assert built["quantized"]["layers"].k_scale.shape == k.shape[:-1]
    assert built["paged"]["layers"].k.shape == (cfg.num_decoder_layers, 5, 4, cfg.num_kv_heads, cfg.head_dim)
    assert built["paged"]["layers"].page_table is None  # the stored pool is pages only
    table = jnp.zeros((2, 3), jnp.int32)
    attached = kv_cache.with_page_table(built["paged"], table)
    assert attached["layers"].page_table.shape == (cfg.num_decoder_layers, 2, 3)
    assert kv_cache.without_page_table(attached)["layers"].page_table is None


def test_a_wrong_cache_fails_at_trace_time(tiny):
    cfg, model, params = tiny
    tokens, positions = jnp.zeros((2,), jnp.int32), jnp.zeros((2,), jnp.int32)

    def step(cache):
        return jax.eval_shape(lambda c: decode_step(model, params, tokens, positions, c), cache)

    good = kv_cache.init_cache(cfg, 2, 8)
    step(good)
    latent = {
        "layers": kv_cache.LatentCache(
            jnp.zeros((cfg.num_decoder_layers, 2, 8, 4)), jnp.zeros((cfg.num_decoder_layers, 2, 8, 2))
        )
    }
    with pytest.raises(
        TypeError,
        match=r"self-attention: got a LatentCache cache \(layout latent\); expected one of the layouts contiguous",
    ):
        step(latent)
    other = kv_cache.init_cache(cfg.replace(num_kv_heads=cfg.num_kv_heads * 2), 2, 8)
    with pytest.raises(
        ValueError, match=r"ContiguousKV holds \(kv heads, head dim\) = .* a cache built for another model"
    ):
        step(other)
