"""config.json <-> model keys (MaxText.models.hf_configs) for every shipped model with a Hugging Face
checkpoint: the export is a config transformers accepts, reading it back gives the same model keys, and
what a family cannot express is one clear ConfigError; Qwen3-MoE's dense-layer patterns and OLMo 3's released
(pre-5.x) config. No compilation, no weights: fast."""

import glob
import os

import pytest

from MaxText.config import ConfigError, load_config, model_config
from MaxText.config.derived import MODEL_KEYS
from MaxText.models import hf_configs, registry
from MaxText.tests.helpers import BASE_YML

MODELS = sorted(
    os.path.basename(p)[: -len(".yml")]
    for p in glob.glob(os.path.join(os.path.dirname(BASE_YML), "models", "*.yml"))
    if not os.path.basename(p).startswith("gpt3")
)


def _keys(model_name: str) -> dict:
    cfg = load_config([BASE_YML, f"model_name={model_name}"])
    return {k: getattr(cfg, k) for k in MODEL_KEYS}


@pytest.mark.parametrize("model_name", MODELS)
def test_shipped_models_round_trip_through_config_json(model_name):
    transformers = pytest.importorskip("transformers")
    keys = _keys(model_name)
    ids = {"bos_id": 1, "eos_id": 2, "pad_id": -1}
    exported = hf_configs.keys_to_hf_config(keys, None, "bfloat16", ids)
    back = hf_configs.hf_config_to_keys(exported)
    assert back["decoder_block"] == keys["decoder_block"]
    for key, value in back.items():
        assert keys[key] == (list(value) if isinstance(value, tuple) else value), key
    # transformers' own (strict) config class accepts it and reads the same layer pattern and rope.
    hf = transformers.AutoConfig.for_model(**exported)
    assert type(hf).__name__.lower().startswith(exported["model_type"].split("_")[0])
    assert hf.rope_parameters == exported["rope_parameters"]
    if keys["sliding_window_pattern"]:
        assert hf.layer_types == exported["layer_types"]


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model_type": "qwen3", "use_sliding_window": True}, "use_sliding_window=true is not supported"),
        ({"model_type": "gemma3_text", "use_bidirectional_attention": True}, "use_bidirectional_attention"),
        (
            {"model_type": "gemma2", "layer_types": ["full_attention", "sliding_attention"]},
            "layer_types is not",
        ),
        ({"model_type": "llama", "mlp_bias": True}, "mlp_bias=true is not supported for llama"),
        ({"model_type": "llama", "hidden_act": "tanh"}, "hidden_act='tanh' is not supported"),
    ],
    ids=["qwen3_window", "bidirectional", "layer_types", "mlp_bias", "activation"],
)
def test_unsupported_config_fields_are_one_line_errors(config, message):
    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=300, head_dim=16)  # fmt: skip
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        hf_configs.hf_config_to_keys({**base, **config})
    assert "\n" not in str(e.value)


def test_export_refuses_keys_a_family_cannot_express():
    keys = _keys("llama3-8b")
    with pytest.raises(ConfigError, match="use_qk_norm=True: Hugging Face llama needs False"):
        hf_configs.keys_to_hf_config({**keys, "use_qk_norm": True}, None, "bfloat16", {})
    with pytest.raises(ConfigError, match="sliding_window_size=16: Hugging Face qwen3 has no sliding window"):
        hf_configs.keys_to_hf_config({**_keys("qwen3-0.6b"), "sliding_window_size": 16}, None, "float32", {})
    with pytest.raises(ConfigError, match="decoder_block='gpt3' has no Hugging Face equivalent"):
        hf_configs.keys_to_hf_config(_keys("gpt3-52k"), None, "float32", {})


_QWEN3_MOE = dict(model_type="qwen3_moe", hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  vocab_size=300, head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)  # fmt: skip


@pytest.mark.parametrize(
    "layers, fields, dense",
    [(4, {"mlp_only_layers": [0, 1]}, 2), (2, {"decoder_sparse_step": 2}, 1), (3, {}, 0)],
    ids=["mlp_only_layers", "decoder_sparse_step", "all_moe"],
)
def test_qwen3_moe_leading_dense_layers_are_their_own_stack(layers, fields, dense):
    """Dense-MLP layers 0 .. k-1 read as first_num_dense_layers = k (stacks dense_layers, moe_layers) and are
    written back as mlp_only_layers."""
    keys = hf_configs.hf_config_to_keys({**_QWEN3_MOE, "num_hidden_layers": layers, **fields})
    assert keys["first_num_dense_layers"] == dense
    full = {**_keys("qwen3-30b-a3b"), **keys}
    out = hf_configs.keys_to_hf_config(full, None, "float32", {})
    assert (out["mlp_only_layers"], out["decoder_sparse_step"]) == (list(range(dense)), 1)
    cfg = model_config(load_config([BASE_YML, "run_name=t"], overlay=keys))
    names = [(s.name, s.length) for s in registry.stacks(cfg)]
    assert names == (
        [("dense_layers", dense), ("moe_layers", layers - dense)] if dense else [("layers", layers)]
    )


@pytest.mark.parametrize(
    "layers, fields",
    [(3, {"mlp_only_layers": [1]}), (4, {"decoder_sparse_step": 2}), (2, {"mlp_only_layers": [0, 1]})],
    ids=["middle", "every_other", "all_dense"],
)
def test_qwen3_moe_other_dense_patterns_are_one_line_errors(layers, fields):
    with pytest.raises(ConfigError, match="supported only as the first k < num_hidden_layers") as e:
        hf_configs.hf_config_to_keys({**_QWEN3_MOE, "num_hidden_layers": layers, **fields})
    assert "\n" not in str(e.value)


_YARN = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8192, "beta_fast": 32.0,
         "beta_slow": 1.0, "attention_factor": 1.2079441541679836}  # fmt: skip
_OLMO3 = dict(model_type="olmo3", hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=300, sliding_window=4096, rms_norm_eps=1e-6)  # fmt: skip


def test_olmo3_released_config_reads_as_transformers_does():
    """The released files keep rope_theta and rope_scaling on top (transformers 4.57): transformers gives the
    YaRN scaling to the full layers only, and so do we; its 5.x form reads the same."""
    transformers = pytest.importorskip("transformers")
    legacy = {**_OLMO3, "rope_theta": 500000, "rope_scaling": _YARN}
    keys = hf_configs.hf_config_to_keys(legacy)
    hf = transformers.Olmo3Config(**{k: v for k, v in legacy.items() if k != "model_type"})
    assert hf_configs.hf_config_to_keys(hf.to_dict()) == keys
    assert (keys["rope_type"], keys["rope_scaling_factor"], keys["rope_max_timescale"]) == ("yarn", 8.0, 5e5)
    assert (keys["local_rope_max_timescale"], keys["sliding_window_pattern"], keys["use_pre_norms"]) == (
        5e5,
        4,
        False,
    )
    assert hf.layer_types == ["sliding_attention"] * 3 + ["full_attention"] + ["sliding_attention"] * 3 + [
        "full_attention"
    ]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"rope_scaling": {**_YARN, "attention_factor": 1.5}}, "yarn attention_factor=1.5 is not supported"),
        (
            {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},
            "needs full_attention and sliding",
        ),
        ({"layer_types": ["full_attention"] + ["sliding_attention"] * 7}, "layer_types is not"),
    ],
    ids=["attention_factor", "flat_rope", "layer_types"],
)
def test_olmo3_fields_it_cannot_express_are_one_line_errors(fields, message):
    with pytest.raises(ConfigError, match=message) as e:
        hf_configs.hf_config_to_keys({**_OLMO3, **fields})
    assert "\n" not in str(e.value)
