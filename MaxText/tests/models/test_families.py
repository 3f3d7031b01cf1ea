"""The dense families: their special features change Hugging Face's logits (so the tiny models exercise
them), decode == forward for every family (sliding windows shorter than the sequence, grouped stacks with a
tail, unscanned), the tensor mapping's round trip, gpt3 (no Hugging Face checkpoint) training and decoding,
and family key errors. Logits, greedy generation, export and a training step against Hugging Face through the
real conversion path are test_hf_parity's.

For each of gemma, gemma2, gemma3 (text), qwen3 and olmo3 a tiny random Hugging Face model with the family's
special features switched on (GQA/MQA, sliding window < sequence, soft caps, local/global rope with linear
scaling or YaRN, qk-norm per head or over the whole projection, 1 + w norms, post norms only) is mapped onto our parameters with MaxText.models.hf_mappings (transpose,
reshape and stack only) and its config onto our keys with hf_config_to_keys.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# pylint: disable=wrong-import-position
from MaxText import input_pipeline
from MaxText.config import load_config, model_config
from MaxText.models import hf_mappings
from MaxText.parallel import mesh as mesh_lib
from MaxText.tests.helpers import (
    BASE_YML,
    FAMILY_COMMON,
    GEMMA3_ROPE,
    OLMO3_ROPE,
    TINY,
    decode_matches_forward,
    family_ids,
)
from MaxText.tests.helpers import family_model_config, full_logits, hf_logits
from MaxText.training import trainer
from MaxText.models.transformer import make_model
from MaxText.training.train_state import init_state

# family -> (config class, model class, special features on). Windows of 6 < T; gemma3 groups of 3 layers
# with 5 layers gives one (local, local, global) group and a tail of 2 local layers; olmo3's 5 layers one
# (sliding x 3, full) group and a tail of 1.
HF_MODELS = {
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(num_hidden_layers=2, num_key_value_heads=1)),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(
            num_hidden_layers=4,
            sliding_window=6,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
        ),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            num_hidden_layers=5,
            sliding_window=6,
            sliding_window_pattern=3,
            query_pre_attn_scalar=24,
            rope_parameters=GEMMA3_ROPE,
        ),
    ),
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(
            num_hidden_layers=2,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        ),
    ),
    "olmo3": (
        "Olmo3Config",
        "Olmo3ForCausalLM",
        dict(
            num_hidden_layers=5, sliding_window=6, rope_parameters=OLMO3_ROPE, pad_token_id=0, eos_token_id=1
        ),
    ),
}
# Each switch turns one special feature off; the test shows it changes HF's logits, so the inputs exercise it.
FEATURE_OFF = {
    "gemma2": [
        {"sliding_window": 64},
        {"attn_logit_softcapping": None},
        {"final_logit_softcapping": None},
        {"query_pre_attn_scalar": 16},
    ],
    "gemma3": [
        {"sliding_window": 64},
        {"rope_parameters": {**GEMMA3_ROPE, "sliding_attention": GEMMA3_ROPE["full_attention"]}},
        {
            "rope_parameters": {
                **GEMMA3_ROPE,
                "full_attention": {"rope_type": "default", "rope_theta": 1000.0},
            }
        },
    ],
    "olmo3": [
        {"sliding_window": 64},
        {"rope_parameters": {**OLMO3_ROPE, "full_attention": OLMO3_ROPE["sliding_attention"]}},
        {"rope_parameters": {**OLMO3_ROPE, "sliding_attention": OLMO3_ROPE["full_attention"]}},
    ],
}
FAMILIES = list(HF_MODELS)


def _hf_config(family, **overrides):
    config_cls, _, extra = HF_MODELS[family]
    return getattr(transformers, config_cls)(**{**FAMILY_COMMON, **extra, **overrides})


@functools.lru_cache(maxsize=None)
def hf_case(family: str):
    """(HF model, our ModelConfig, our model, params mapped from the HF state dict, HF logits)."""
    torch.manual_seed(0)
    hf = getattr(transformers, HF_MODELS[family][1])(_hf_config(family)).eval()
    with torch.no_grad():  # norms start at zero (1 + w) or one; random values exercise them
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    cfg = family_model_config(hf_mappings.hf_config_to_keys(hf.config.to_dict()))
    params = hf_mappings.hf_to_params(cfg.decoder_block, hf.state_dict(), cfg)
    return hf, cfg, make_model(cfg), params, hf_logits(hf, family_ids())


@pytest.mark.parametrize("family", list(FEATURE_OFF))
def test_inputs_exercise_the_family_features(family):
    hf, _, _, _, want = hf_case(family)
    for off in FEATURE_OFF[family]:
        plain = type(hf)(_hf_config(family, **off)).eval()
        plain.load_state_dict(hf.state_dict())
        assert np.abs(hf_logits(plain, family_ids()) - want).max() > 1e-2, off


def test_mapping_round_trips_and_names_missing_tensors():
    hf, cfg, _, params, _ = hf_case("gemma3")
    state = {k: v.numpy() for k, v in hf.state_dict().items() if k != "lm_head.weight"}  # tied
    back = hf_mappings.params_to_hf("gemma3", params, cfg)
    assert sorted(back) == sorted(state)
    for name, x in state.items():
        np.testing.assert_array_equal(back[name], x)
    assert params["decoder"]["tail"]["self_attention"]["query_norm"]["scale"].shape == (16, 2)
    assert params["decoder"]["layers"]["global"]["post_ffw_norm"]["scale"].shape == (64, 1)
    del state["model.layers.4.self_attn.k_norm.weight"]
    with pytest.raises(Exception, match="model.layers.4.self_attn.k_norm.weight"):
        hf_mappings.hf_to_params("gemma3", state, cfg)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_then_decode_equals_forward(family):
    _, cfg, model, params, _ = hf_case(family)
    decode_matches_forward(cfg, model, params)


@pytest.mark.slow
def test_prefill_then_decode_equals_forward_unscanned_groups():
    hf, cfg, _, _, want = hf_case("gemma3")
    cfg = cfg.replace(scan_layers=False)
    model = make_model(cfg)
    params = hf_mappings.hf_to_params("gemma3", hf.state_dict(), cfg)
    assert {"layers_0", "tail_0", "tail_1"} <= set(params["decoder"])
    np.testing.assert_allclose(full_logits(model, params, family_ids()), want, atol=1e-4)
    decode_matches_forward(cfg, model, params)


def _init(cfg):
    model = make_model(cfg)
    boxed = model.init(
        jax.random.key(0),
        jnp.zeros((1, 8), jnp.int32),
        jnp.arange(8)[None],
        jnp.ones((1, 8), jnp.int32),
        "train",
    )
    return model, jax.tree.map(
        lambda x: x.value if hasattr(x, "value") else x,
        boxed["params"],
        is_leaf=lambda x: hasattr(x, "value"),
    )


def test_gpt3_decode_equals_forward():
    cfg = model_config(load_config([BASE_YML, "model_name=gpt3-52k", "matmul_precision=highest"]))
    model, params = _init(cfg)
    assert params["decoder"]["position_embedder"]["embedding"].shape == (2048, 16)
    assert params["decoder"]["layers"]["mlp"]["wi"]["bias"].shape == (64, 1)  # [F, layers]
    assert set(params["decoder"]["layers"]["pre_self_attention_norm"]) == {"scale", "bias"}
    decode_matches_forward(cfg, model, params)


def _train_losses(overrides, steps=3):
    """Losses of `steps` optimizer steps on one repeated batch (so the loss must fall)."""
    cfg = load_config([BASE_YML, *TINY, "per_device_batch_size=2", "max_target_length=16", *overrides])
    s = trainer.build(cfg, jax.devices()[:1])
    p_train, _ = trainer.compile_steps(s)
    batch = next(input_pipeline.make_train_iterator(trainer.data_config(cfg, s.global_batch)))
    losses = []
    with mesh_lib.activate(s.mesh, s.rules):
        state = init_state(s.model, s.tx, cfg.init_weights_seed, s.shardings)
        for _ in range(steps):
            state, metrics = p_train(state, trainer.to_device(s, batch))
            losses.append(float(metrics["loss"]))
    return np.array(losses)


def test_gpt3_trains():
    losses = _train_losses(["model_name=gpt3-52k"])
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (
            ["model_name=llama3-8b", "sliding_window_pattern=2"],
            "sliding_window_pattern=2: only decoder_block",
        ),
        (
            ["model_name=gemma2-2b", "sliding_window_pattern=0"],
            "sliding_window_pattern=0: decoder_block='gemma2'",
        ),
        (["model_name=gpt3-52k", "max_target_length=4096"], "must be <= trainable_position_size=2048"),
        (["model_name=llama3-8b", "qk_norm_across_heads=true"], "qk_norm_across_heads=true: it shapes"),
        (["normalization_type=batchnorm"], "normalization_type='batchnorm': expected one of"),
    ],
)
def test_family_key_errors_are_one_line(overrides, fragment):
    with pytest.raises(Exception, match=fragment.replace("(", r"\(")) as e:
        load_config([BASE_YML, *overrides])
    assert "\n" not in str(e.value)
