"""Hugging Face config.json <-> our model keys, for every family with a Hugging Face checkpoint.

config.json is read the transformers 5.x way (RoPE in `rope_parameters`, per layer type for Gemma 3; the
local/global pattern in `layer_types`), and older files (`rope_theta`, `rope_scaling`,
`rope_local_base_freq`, `sliding_window_pattern`) are read too. Every dimension comes from the file, so
non-standard sizes convert. Multimodal Gemma 3 configs give their language model (`text_config`). Anything
our model cannot express raises ConfigError naming the field.

  hf_config_to_keys(hf_config) -> our model keys
  keys_to_hf_config(keys, source, dtype, token_ids) -> config.json (transformers 5.x) for our model keys

Adding a family: a row in FAMILIES (its Hugging Face names and the keys its architecture fixes) and, when
it has features of its own, a few lines in _family_keys / _family_fields.
"""

from typing import NamedTuple

from MaxText.config.errors import ConfigError


class HFFamily(NamedTuple):
    """How one of our decoder blocks looks in transformers."""

    model_type: str  # config.json model_type written on export
    architecture: str  # architectures[0]
    act_key: str  # the field transformers' MLP reads its activation from
    default_act: str
    tied_default: bool  # tie_word_embeddings when config.json omits it
    fixed: dict  # our keys the architecture implies (set on import, checked on export)


_PLAIN = dict(use_qk_norm=False, normalization_scale_offset=0.0, scale_embeddings_by_sqrt_dim=False)
_GEMMA = dict(normalization_scale_offset=1.0, scale_embeddings_by_sqrt_dim=True)
_SANDWICH = dict(_GEMMA, use_post_attn_norm=True, use_post_ffw_norm=True)
_COMMON = dict(normalization_type="rmsnorm", use_bias=False, trainable_position_size=0)
# Our decoder_block -> its Hugging Face form. Llama 2 and Llama 3 share "llama2" (Llama 3 is rope_type llama3).
FAMILIES = {
    "llama2": HFFamily("llama", "LlamaForCausalLM", "hidden_act", "silu", False, _PLAIN),
    "mistral": HFFamily("mistral", "MistralForCausalLM", "hidden_act", "silu", False, _PLAIN),
    "qwen3": HFFamily("qwen3", "Qwen3ForCausalLM", "hidden_act", "silu", False, dict(_PLAIN, use_qk_norm=True)),
    "gemma": HFFamily("gemma", "GemmaForCausalLM", "hidden_act", "gelu_pytorch_tanh", True, dict(_GEMMA, use_qk_norm=False)),
    "gemma2": HFFamily("gemma2", "Gemma2ForCausalLM", "hidden_activation", "gelu_pytorch_tanh", True, dict(_SANDWICH, use_qk_norm=False)),
    "gemma3": HFFamily("gemma3_text", "Gemma3ForCausalLM", "hidden_activation", "gelu_pytorch_tanh", True, dict(_SANDWICH, use_qk_norm=True)),
}  # fmt: skip
# config.json model_type -> our decoder_block ("gemma3" is the multimodal wrapper around gemma3_text).
MODEL_TYPES = {f.model_type: block for block, f in FAMILIES.items()} | {"gemma3": "gemma3"}
ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "relu": "relu",
}
HF_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
_LLAMA3_KEYS = {
    "factor": "rope_scaling_factor",
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "original_max_position_embeddings": "rope_original_max_position_embeddings",
}


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def text_config(hf: dict) -> dict:
    """The language model's config: a multimodal Gemma 3 config's text_config, else the config itself."""
    if hf.get("model_type") == "gemma3" and "text_config" in hf:
        ids = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in hf}
        return {**ids, **hf["text_config"], "model_type": "gemma3_text"}
    return hf


def _rope_keys(params: dict, where: str) -> dict:
    """Our rope keys for one transformers 5.x rope_parameters dict."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    _require(
        rope_type in ("default", "linear", "llama3"),
        f"{where}: rope_type={rope_type!r} is not supported (default, linear, llama3)",
    )
    keys = {"rope_type": rope_type, "rope_max_timescale": float(params["rope_theta"])}
    if rope_type == "linear":
        keys["rope_scaling_factor"] = float(params["factor"])
    if rope_type == "llama3":
        for hf_key, key in _LLAMA3_KEYS.items():
            _require(hf_key in params, f"{where}: rope_parameters lacks {hf_key!r} for rope_type 'llama3'")
            keys[key] = params[hf_key]
    return keys


def _rope_parameters(hf: dict) -> dict:
    """rope_parameters in 5.x form; older files keep rope_theta / rope_scaling / rope_local_base_freq on top."""
    if hf.get("rope_parameters"):
        return dict(hf["rope_parameters"])
    params = {**(hf.get("rope_scaling") or {}), "rope_theta": hf.get("rope_theta", 10000.0)}
    if hf.get("model_type", "").startswith("gemma3"):
        local = {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 10000.0)}
        return {"full_attention": params, "sliding_attention": local}
    return params


def _layer_pattern(hf: dict, where: str) -> int:
    """P such that layer i is global iff (i + 1) % P == 0, from layer_types (or sliding_window_pattern)."""
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if not types:
        return int(hf.get("sliding_window_pattern") or (2 if hf["model_type"] == "gemma2" else 6))
    p = types.index("full_attention") + 1 if "full_attention" in types else 0
    _require(
        p > 0 and list(types) == layer_types(n, p),
        f"{where}: layer_types is not a repeating pattern of sliding layers then one full layer",
    )
    return p


def layer_types(num_layers: int, pattern: int) -> list:
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)]


def _family_keys(block: str, hf: dict, where: str) -> dict:
    """The keys of each family's own features (windows, soft caps, local/global rope)."""
    rope = _rope_parameters(hf)
    if block in ("llama2", "qwen3", "gemma"):
        _require(not hf.get("use_sliding_window"), f"{where}: use_sliding_window=true is not supported")
        return _rope_keys(rope, where)
    if block == "mistral":
        return {**_rope_keys(rope, where), "sliding_window_size": int(hf.get("sliding_window") or 0)}
    _require(
        not hf.get("use_bidirectional_attention"),
        f"{where}: use_bidirectional_attention=true is not supported",
    )
    keys = dict(
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or hf["head_dim"]),
        # transformers' Gemma 3 attention ignores attn_logit_softcapping (the released models set none).
        attn_logits_soft_cap=float(hf.get("attn_logit_softcapping") or 0.0) if block == "gemma2" else 0.0,
        final_logits_soft_cap=float(hf.get("final_logit_softcapping") or 0.0),
        sliding_window_size=int(hf.get("sliding_window") or 0),
        sliding_window_pattern=_layer_pattern(hf, where),
    )
    if block == "gemma2":
        return {**keys, **_rope_keys(rope, where)}
    local = _rope_keys(rope["sliding_attention"], f"{where} (sliding_attention)")
    _require(
        local["rope_type"] == "default", f"{where}: rope scaling on sliding_attention layers is not supported"
    )
    keys["local_rope_max_timescale"] = local["rope_max_timescale"]
    return {**keys, **_rope_keys(rope["full_attention"], f"{where} (full_attention)")}


def hf_config_to_keys(hf: dict, where: str = "config.json") -> dict:
    """Our model keys for a config.json dict. Raises ConfigError for an unsupported model or feature."""
    hf = text_config(hf)
    block = MODEL_TYPES.get(hf.get("model_type"))
    if block is None:
        arch = ", ".join(hf.get("architectures") or []) or "no architectures listed"
        raise ConfigError(
            f"{where}: model_type {hf.get('model_type')!r} ({arch}) is not supported; "
            f"supported: {', '.join(MODEL_TYPES)}"
        )
    fam = FAMILIES[block]
    for flag in ("attention_bias", "mlp_bias"):
        _require(not hf.get(flag), f"{where}: {flag}=true is not supported for {hf['model_type']}")
    act = hf.get(fam.act_key) or hf.get("hidden_act") or fam.default_act
    _require(act in ACTIVATIONS, f"{where}: hidden_act={act!r} is not supported ({', '.join(ACTIVATIONS)})")
    heads = hf["num_attention_heads"]
    hf = {**hf, "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads}
    keys = {
        "decoder_block": block,
        "base_emb_dim": hf["hidden_size"],
        "base_num_query_heads": heads,
        "base_num_kv_heads": hf.get("num_key_value_heads") or heads,
        "base_mlp_dim": hf["intermediate_size"],
        "base_num_decoder_layers": hf["num_hidden_layers"],
        "head_dim": hf["head_dim"],
        "vocab_size": hf["vocab_size"],
        "mlp_activations": [ACTIVATIONS[act], "linear"],
        "normalization_layer_epsilon": float(hf.get("rms_norm_eps", 1e-6)),
        "logits_via_embedding": bool(hf.get("tie_word_embeddings", fam.tied_default)),
        **_COMMON,
        **fam.fixed,
    }
    return {**keys, **_family_keys(block, hf, where)}


def _hf_rope(keys: dict) -> dict:
    rope = {"rope_type": keys["rope_type"], "rope_theta": float(keys["rope_max_timescale"])}
    if keys["rope_type"] == "linear":
        rope["factor"] = float(keys["rope_scaling_factor"])
    if keys["rope_type"] == "llama3":
        rope.update({hf_key: keys[key] for hf_key, key in _LLAMA3_KEYS.items()})
    return rope


def _number(x: float):
    """An int when integral: transformers' strict config classes type query_pre_attn_scalar as int."""
    return int(x) if float(x).is_integer() else float(x)


def _family_fields(block: str, keys: dict) -> dict:
    """config.json fields of each family's own features (inverse of _family_keys)."""
    rope = _hf_rope(keys)
    window = keys["sliding_window_size"]
    if block in ("llama2", "qwen3", "gemma"):
        _require(not window, f"sliding_window_size={window}: Hugging Face {block} has no sliding window")
        extra = {"use_sliding_window": False} if block == "qwen3" else {}
        return {"rope_parameters": rope, **extra}
    if block == "mistral":
        return {"rope_parameters": rope, "sliding_window": window or None}
    pattern, n = keys["sliding_window_pattern"], keys["base_num_decoder_layers"]
    fields = {
        "query_pre_attn_scalar": _number(keys["query_pre_attn_scalar"] or keys["head_dim"]),
        "attn_logit_softcapping": keys["attn_logits_soft_cap"] or None,
        "final_logit_softcapping": keys["final_logits_soft_cap"] or None,
        "sliding_window": window or None,
        "layer_types": layer_types(n, pattern),
        "rope_parameters": rope,
    }
    if block == "gemma3":
        local = {
            "rope_type": "default",
            "rope_theta": float(keys["local_rope_max_timescale"] or keys["rope_max_timescale"]),
        }
        fields["rope_parameters"] = {"full_attention": rope, "sliding_attention": local}
    return fields


def keys_to_hf_config(keys: dict, source: dict | None, dtype: str, token_ids: dict) -> dict:
    """config.json (transformers 5.x format) for our model keys (base.yml defaults filled in).

    source: the config.json the checkpoint was converted from, if any; its other fields (ids, max positions,
    initializer range, ...) are kept (a multimodal source gives its text_config: the export is the language
    model). token_ids: {"bos_id", "eos_id", "pad_id"} for a model without a source.
    """
    block = keys["decoder_block"]
    _require(
        block in FAMILIES, f"decoder_block={block!r} has no Hugging Face equivalent ({', '.join(FAMILIES)})"
    )
    fam = FAMILIES[block]
    for key, value in {**_COMMON, **fam.fixed}.items():
        _require(keys[key] == value, f"{key}={keys[key]!r}: Hugging Face {fam.model_type} needs {value!r}")
    acts = list(keys["mlp_activations"])
    _require(
        len(acts) == 2 and acts[1] == "linear" and acts[0] in HF_ACTIVATIONS,
        f"mlp_activations={acts}: Hugging Face {fam.model_type} needs [<act>, linear]",
    )
    out = dict(text_config(source) if source else {})
    legacy = ("rope_theta", "rope_scaling", "rope_local_base_freq", "sliding_window_pattern", "torch_dtype")
    for key in legacy + ("transformers_version", "hidden_activation", "hidden_act"):
        out.pop(key, None)
    if not source:
        ids = {f"{k[:-3]}_token_id": (v if v is not None and v >= 0 else None) for k, v in token_ids.items()}
        out.update(ids, attention_bias=False, attention_dropout=0.0, initializer_range=0.02, use_cache=True)
        out["max_position_embeddings"] = max(keys.get("rope_original_max_position_embeddings", 0), 4096)
    out.update(
        model_type=fam.model_type,
        architectures=[fam.architecture],
        hidden_size=keys["base_emb_dim"],
        intermediate_size=keys["base_mlp_dim"],
        num_hidden_layers=keys["base_num_decoder_layers"],
        num_attention_heads=keys["base_num_query_heads"],
        num_key_value_heads=keys["base_num_kv_heads"],
        head_dim=keys["head_dim"],
        vocab_size=keys["vocab_size"],
        rms_norm_eps=keys["normalization_layer_epsilon"],
        tie_word_embeddings=bool(keys["logits_via_embedding"]),
        dtype=dtype,
        **{fam.act_key: HF_ACTIVATIONS[acts[0]]},
        **_family_fields(block, keys),
    )
    return dict(sorted(out.items()))
