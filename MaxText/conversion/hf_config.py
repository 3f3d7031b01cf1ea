"""Hugging Face config.json <-> MaxText model keys, for the families that convert.

config.json is read the transformers 5.x way: RoPE settings in `rope_parameters` (older files with
`rope_theta` / `rope_scaling` are read too), `head_dim` falling back to hidden_size / num_attention_heads,
`tie_word_embeddings`, and `sliding_window` (Mistral). Every dimension comes from the file, so non-standard
sizes convert. Anything our model cannot express raises ConfigError naming the field.
"""

import json
import os

from MaxText.config import ConfigError

# Hugging Face model_type -> our decoder_block, and back.
DECODER_BLOCKS = {"llama": "llama2", "mistral": "mistral"}
MODEL_TYPES = {"llama2": "llama", "mistral": "mistral"}
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
# Hugging Face hidden_act -> our activation name, and back.
ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
HF_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
# safetensors / torch dtype names -> our dtype names.
DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
_LLAMA3_KEYS = {
    "factor": "rope_scaling_factor",
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "original_max_position_embeddings": "rope_original_max_position_embeddings",
}


def read_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{hf_dir}: no config.json (expected a Hugging Face model directory)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rope_parameters(hf: dict) -> dict:
    """The RoPE dict in transformers 5.x form: {"rope_type", "rope_theta", ...type-specific keys}."""
    params = dict(hf.get("rope_parameters") or {})
    if not params:  # transformers 4.x files: rope_theta at the top, scaling in rope_scaling
        params = dict(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    params.setdefault("rope_type", "default")
    return params


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _rope_keys(hf: dict, where: str) -> dict:
    rope = rope_parameters(hf)
    rope_type = rope["rope_type"]
    _require(
        rope_type in ("default", "llama3"),
        f"{where}: rope_parameters.rope_type={rope_type!r} is not supported (supported: default, llama3)",
    )
    keys = {"rope_type": rope_type, "rope_max_timescale": float(rope["rope_theta"])}
    if rope_type == "llama3":
        for hf_key, key in _LLAMA3_KEYS.items():
            _require(hf_key in rope, f"{where}: rope_parameters lacks {hf_key!r} for rope_type 'llama3'")
            keys[key] = rope[hf_key]
    return keys


def to_model_keys(hf: dict, where: str) -> dict:
    """Our model keys (decoder_block, base_emb_dim, ...) for a Hugging Face config dict.

    where: the config's path, for error messages. Raises ConfigError for unsupported models or features.
    """
    model_type = hf.get("model_type")
    if model_type not in DECODER_BLOCKS:
        arch = ", ".join(hf.get("architectures") or []) or "no architectures listed"
        raise ConfigError(
            f"{where}: model_type {model_type!r} ({arch}) is not supported; supported: {', '.join(DECODER_BLOCKS)}"
        )
    for flag in ("attention_bias", "mlp_bias"):
        _require(not hf.get(flag), f"{where}: {flag}=true is not supported for {model_type}")
    act = hf.get("hidden_act", "silu")
    _require(act in ACTIVATIONS, f"{where}: hidden_act={act!r} is not supported ({', '.join(ACTIVATIONS)})")
    heads = hf["num_attention_heads"]
    keys = {
        "decoder_block": DECODER_BLOCKS[model_type],
        "base_emb_dim": hf["hidden_size"],
        "base_num_query_heads": heads,
        "base_num_kv_heads": hf.get("num_key_value_heads") or heads,
        "base_mlp_dim": hf["intermediate_size"],
        "base_num_decoder_layers": hf["num_hidden_layers"],
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "vocab_size": hf["vocab_size"],
        "mlp_activations": [ACTIVATIONS[act], "linear"],
        "normalization_layer_epsilon": float(hf.get("rms_norm_eps", 1e-6)),
        "logits_via_embedding": bool(hf.get("tie_word_embeddings", False)),
        "sliding_window_size": int(hf.get("sliding_window") or 0) if model_type == "mistral" else 0,
        "param_scan_axis": 1,
    }
    keys.update(_rope_keys(hf, where))
    return keys


def _first_id(value):
    return value[0] if isinstance(value, list) and value else value


def special_ids(hf: dict) -> dict:
    """{"bos_id", "eos_id", "pad_id"} from a config dict (the first one where a list is given); None if absent."""
    return {f"{k}_id": _first_id(hf.get(f"{k}_token_id")) for k in ("bos", "eos", "pad")}


def to_hf_config(keys: dict, source: dict | None, dtype: str, token_ids: dict) -> dict:
    """config.json (transformers 5.x format) for our model keys.

    source: the config.json the checkpoint was converted from, if any; its other fields (ids, max positions,
    initializer range, ...) are kept. token_ids: {"bos_id", "eos_id", "pad_id"} for a model without a source.
    """
    block = keys["decoder_block"]
    _require(block in MODEL_TYPES, f"decoder_block={block!r} has no Hugging Face equivalent")
    acts = list(keys["mlp_activations"])
    _require(
        len(acts) == 2 and acts[1] == "linear" and acts[0] in HF_ACTIVATIONS,
        f"mlp_activations={acts}: Hugging Face {MODEL_TYPES[block]} needs [<act>, linear]",
    )
    model_type = MODEL_TYPES[block]
    out = dict(source or {})
    for legacy in ("rope_theta", "rope_scaling", "torch_dtype", "transformers_version"):
        out.pop(legacy, None)
    if not source:
        ids = {f"{k[:-3]}_token_id": (v if v is not None and v >= 0 else None) for k, v in token_ids.items()}
        out.update(ids, attention_bias=False, attention_dropout=0.0, initializer_range=0.02, use_cache=True)
        out["max_position_embeddings"] = max(keys.get("rope_original_max_position_embeddings", 0), 4096)
        if model_type == "llama":
            out["mlp_bias"] = False
    rope = {"rope_type": keys["rope_type"], "rope_theta": float(keys["rope_max_timescale"])}
    if keys["rope_type"] == "llama3":
        rope.update({hf_key: keys[key] for hf_key, key in _LLAMA3_KEYS.items()})
    out.update(
        model_type=model_type,
        architectures=[ARCHITECTURES[model_type]],
        hidden_size=keys["base_emb_dim"],
        intermediate_size=keys["base_mlp_dim"],
        num_hidden_layers=keys["base_num_decoder_layers"],
        num_attention_heads=keys["base_num_query_heads"],
        num_key_value_heads=keys["base_num_kv_heads"],
        head_dim=keys["head_dim"],
        vocab_size=keys["vocab_size"],
        hidden_act=HF_ACTIVATIONS[acts[0]],
        rms_norm_eps=keys["normalization_layer_epsilon"],
        tie_word_embeddings=bool(keys["logits_via_embedding"]),
        rope_parameters=rope,
        dtype=dtype,
    )
    if model_type == "mistral":
        out["sliding_window"] = keys["sliding_window_size"] or None
    else:
        _require(not keys.get("sliding_window_size"), "sliding_window_size > 0 needs decoder_block=mistral")
    return dict(sorted(out.items()))
