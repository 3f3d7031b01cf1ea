"""Decode with the KV cache equals the full forward pass; generation and sampling behave as specified."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from MaxText.inference.generate import DecodeSettings, Generator, decode_step, prefill
from MaxText.inference.kv_cache import init_cache
from MaxText.inference.sampling import SamplingConfig, sample
from MaxText.models.transformer import unstack_layers
from MaxText.tests.helpers import decode_ids, full_logits, greedy_reference, tiny_model

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


@pytest.mark.slow
def test_greedy_generation_equals_repeated_forward():
    cfg, model, params = tiny_model("base_num_decoder_layers=1")
    settings = DecodeSettings(
        prefill_length=6, max_new=5, eos_id=-1, pad_id=0, sampling=SamplingConfig("greedy")
    )
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14]]
    got = Generator(model, params, settings).generate(prompts)["tokens"]
    del cfg
    for prompt, tokens in zip(prompts, got):
        assert tokens == greedy_reference(model, params, prompt, 5)


def test_generation_stops_at_eos_and_rejects_long_prompts():
    _, model, params = tiny_model("base_num_decoder_layers=1")
    greedy = SamplingConfig("greedy")
    probe = Generator(model, params, DecodeSettings(4, 6, -1, 0, greedy)).generate([[1, 2]])["tokens"][0]
    eos = probe[2]  # make the third generated token the EOS
    gen = Generator(model, params, DecodeSettings(4, 6, eos, 0, greedy))
    out = gen.generate([[1, 2]])
    assert out["tokens"][0] == probe[: probe.index(eos)]
    assert out["time_to_first_token_s"] > 0 and gen.compile_s > 0
    with pytest.raises(ValueError, match="prompt 0 has 5 tokens"):
        gen.generate([[1, 2, 3, 4, 5]])


def test_sampling_filters():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))

    def draws(cfg):
        return np.asarray(sample(logits, jax.random.key(0), cfg))

    assert set(draws(SamplingConfig("greedy")).tolist()) == {0}
    assert set(draws(SamplingConfig("topk", top_k=2)).tolist()) == {0, 1}
    assert set(draws(SamplingConfig("nucleus", top_p=0.7)).tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert set(draws(SamplingConfig("nucleus", top_p=0.4)).tolist()) == {0}  # always keeps the top token
    freq = np.bincount(draws(SamplingConfig("weighted")), minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    cold = np.bincount(draws(SamplingConfig("weighted", temperature=0.25)), minlength=4) / 4000
    assert cold[0] > 0.85  # p^4 renormalised: 0.5^4 / sum = 0.88
    np.testing.assert_array_equal(draws(SamplingConfig("weighted")), draws(SamplingConfig("weighted")))
    with pytest.raises(ValueError, match="top_k > 0"):
        SamplingConfig("topk")
