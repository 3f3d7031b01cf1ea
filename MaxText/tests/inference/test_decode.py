"""Decode with the KV cache equals the full forward pass; the sampler's filters behave as specified.
(Generation itself runs on the Engine: tests/inference/test_engine.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText.inference.engine import request_keys
from MaxText.inference.generate import decode_step, prefill
from MaxText.inference.kv_cache import init_cache
from MaxText.inference.sampling import sample_rows
from MaxText.models.transformer import unstack_layers
from MaxText.tests.helpers import decode_ids, full_logits, tiny_model

B, T = 3, 14
LENGTHS = np.array([4, 9, 1])


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["sliding_window_size=3"],
        pytest.param(["scan_layers=false"], marks=pytest.mark.slow),
        pytest.param(["attention=flash", "flash_block_size=4"], marks=pytest.mark.slow),
    ],
    ids=["gqa", "window", "unscanned", "flash_prefill"],
)
def test_prefill_then_decode_equals_forward(overrides):
    cfg, model, params = tiny_model(*overrides)
    if "scan_layers=false" in overrides:  # same weights as the scanned model, restacked
        _, _, scanned = tiny_model()
        params = unstack_layers(scanned, cfg)
    ids = decode_ids()
    want = full_logits(model, params, ids)
    prompt_len = 10  # bucket: rows hold LENGTHS real tokens, the rest is padding
    padded = jnp.where(jnp.arange(prompt_len)[None] < LENGTHS[:, None], ids[:, :prompt_len], 0)
    cache = init_cache(cfg, B, T + 2)
    last, cache = jax.jit(lambda p, i, l, c: prefill(model, p, i, l, c))(
        params, padded, jnp.asarray(LENGTHS), cache
    )
    np.testing.assert_allclose(last, want[np.arange(B), LENGTHS - 1], atol=2e-5)
    step = jax.jit(lambda p, t, pos, c: decode_step(model, p, t, pos, c))
    positions = jnp.asarray(LENGTHS)
    for _ in range(T - int(LENGTHS.min())):
        pos = np.minimum(np.asarray(positions), T - 1)
        logits, cache = step(params, ids[np.arange(B), pos], jnp.asarray(pos), cache)
        for b in range(B):
            if positions[b] < T:  # rows still inside the reference sequence
                np.testing.assert_allclose(logits[b], want[b, positions[b]], atol=2e-5)
        positions = positions + 1


def test_sampling_filters():
    n = 4000
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * n))
    keys = request_keys(jnp.zeros((n,), jnp.uint32), jnp.arange(n))  # one request, n steps

    def draws(temperature=1.0, top_k=0, top_p=1.0):
        settings = ((temperature, jnp.float32), (top_k, jnp.int32), (top_p, jnp.float32))
        rows = [jnp.full((n,), value, dtype) for value, dtype in settings]
        return np.asarray(jax.jit(sample_rows)(logits, keys, *rows))

    assert set(draws(temperature=0.0).tolist()) == {0}
    assert set(draws(top_k=2).tolist()) == {0, 1}
    assert set(draws(top_p=0.7).tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert set(draws(top_p=0.4).tolist()) == {0}  # always keeps the top token
    freq = np.bincount(draws(), minlength=4) / n
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    cold = np.bincount(draws(temperature=0.25), minlength=4) / n
    assert cold[0] > 0.85  # p^4 renormalised: 0.5^4 / sum = 0.88
    np.testing.assert_array_equal(draws(), draws())
