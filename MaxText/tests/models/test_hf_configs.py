"""config.json <-> model keys (MaxText.models.hf_configs) for every shipped model with a Hugging Face
checkpoint: the export is a config transformers accepts, reading it back gives the same model keys, and
what a family cannot express is one clear ConfigError. No compilation, no weights: fast."""

import glob
import os

import pytest

from MaxText.config import ConfigError, load_config
from MaxText.config.derived import MODEL_KEYS
from MaxText.models import hf_configs
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
