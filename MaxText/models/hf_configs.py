"""Hugging Face config.json <-> our model keys, for every family with a Hugging Face checkpoint.

config.json is read the transformers 5.x way (RoPE in `rope_parameters`, per layer type for Gemma 3; the
local/global pattern in `layer_types`), and older files (`rope_theta`, `rope_scaling`,
`rope_local_base_freq`, `sliding_window_pattern`) are read too. Every dimension comes from the file, so
non-standard sizes convert. Multimodal Gemma 3 configs give their language model (`text_config`). Anything
our model cannot express raises ConfigError naming the field.

  hf_config_to_keys(hf_config) -> our model keys
  keys_to_hf_config(keys, source, dtype, token_ids) -> config.json (transformers 5.x) for our model keys

What is particular to a family (its Hugging Face names, the keys its architecture fixes, its own features
both ways) lives in its spec (FamilySpec.hf, models/spec.py); this module holds what families share: the
common fields, RoPE, the local/global layer pattern, and helpers the family modules build on.
"""

from MaxText.config.errors import ConfigError
from MaxText.models import registry

# Keys the families' architectures fix (FamilySpec.hf.fixed is built from these).
PLAIN = dict(use_qk_norm=False, normalization_scale_offset=0.0, scale_embeddings_by_sqrt_dim=False)
GEMMA = dict(normalization_scale_offset=1.0, scale_embeddings_by_sqrt_dim=True)
SANDWICH = dict(GEMMA, use_post_attn_norm=True, use_post_ffw_norm=True)
SOFTMAX = dict(moe_score_func="softmax", moe_score_correction_bias=False, moe_group_score="max")
_COMMON = dict(
    normalization_type="rmsnorm",
    use_bias=False,
    trainable_position_size=0,
    use_pre_norms=True,
    qk_norm_across_heads=False,
)
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
# yarn: the required fields, then the optional ones with transformers' defaults (0 = unset mscale).
_YARN_KEYS = {
    "factor": "rope_scaling_factor",
    "original_max_position_embeddings": "rope_original_max_position_embeddings",
}
_YARN_OPTIONAL = {
    "beta_fast": ("rope_yarn_beta_fast", 32.0),
    "beta_slow": ("rope_yarn_beta_slow", 1.0),
    "mscale": ("rope_yarn_mscale", 0.0),
    "mscale_all_dim": ("rope_yarn_mscale_all_dim", 0.0),
}
ROPE_TYPES = ("default", "linear", "llama3")
MOE_ROPE_TYPES = ROPE_TYPES + ("yarn",)  # the MoE blocks' rope takes yarn (DeepSeek's long context)


def require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def text_config(hf: dict) -> dict:
    """The language model's config: what the family's `text_config` makes of a multimodal config (Gemma 3's
    text_config), else the config itself."""
    spec = registry.by_model_type(hf.get("model_type"))
    return spec.hf.text_config(hf) if spec and spec.hf.text_config else hf


def rope_keys(params: dict, where: str, types: tuple = ROPE_TYPES) -> dict:
    """Our rope keys for one transformers 5.x rope_parameters dict whose rope_type is one of `types`."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    require(rope_type in types, f"{where}: rope_type={rope_type!r} is not supported ({', '.join(types)})")
    keys = {"rope_type": rope_type, "rope_max_timescale": float(params["rope_theta"])}
    if rope_type == "linear":
        keys["rope_scaling_factor"] = float(params["factor"])
    if rope_type == "llama3":
        for hf_key, key in _LLAMA3_KEYS.items():
            require(hf_key in params, f"{where}: rope_parameters lacks {hf_key!r} for rope_type 'llama3'")
            keys[key] = params[hf_key]
    if rope_type == "yarn":
        for hf_key, key in _YARN_KEYS.items():
            require(hf_key in params, f"{where}: rope_parameters lacks {hf_key!r} for rope_type 'yarn'")
            keys[key] = params[hf_key]
        keys.update({key: float(params.get(hf_key) or d) for hf_key, (key, d) in _YARN_OPTIONAL.items()})
    return keys


def rope_parameters(hf: dict) -> dict:
    """rope_parameters in 5.x form; older files keep rope_theta / rope_scaling on top."""
    if hf.get("rope_parameters"):
        return dict(hf["rope_parameters"])
    return {**(hf.get("rope_scaling") or {}), "rope_theta": hf.get("rope_theta", 10000.0)}


def layer_pattern(hf: dict, where: str, default: int) -> int:
    """P such that layer i is global iff (i + 1) % P == 0, from layer_types (or sliding_window_pattern, else
    the family's `default`)."""
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if not types:
        return int(hf.get("sliding_window_pattern") or default)
    p = types.index("full_attention") + 1 if "full_attention" in types else 0
    require(
        p > 0 and list(types) == layer_types(n, p),
        f"{where}: layer_types is not a repeating pattern of sliding layers then one full layer",
    )
    return p


def layer_types(num_layers: int, pattern: int) -> list:
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_layers)]


def no_window_keys(hf: dict, where: str) -> dict:
    """The keys of a family whose only own feature is its RoPE (it has no sliding window)."""
    require(not hf.get("use_sliding_window"), f"{where}: use_sliding_window=true is not supported")
    return rope_keys(rope_parameters(hf), where)


def no_window_fields(name: str, extra: dict | None = None):
    """fields_to_hf of such a family (`name` in messages); `extra` fields are written as they are."""

    def fields(keys: dict) -> dict:
        window = keys["sliding_window_size"]
        require(not window, f"sliding_window_size={window}: Hugging Face {name} has no sliding window")
        return {"rope_parameters": hf_rope(keys), **(extra or {})}

    return fields


def sandwich_keys(hf: dict, where: str, default_pattern: int) -> dict:
    """Gemma 2/3's own keys besides RoPE: score scale, soft caps, window and local/global pattern."""
    require(
        not hf.get("use_bidirectional_attention"),
        f"{where}: use_bidirectional_attention=true is not supported",
    )
    return dict(
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or hf["head_dim"]),
        final_logits_soft_cap=float(hf.get("final_logit_softcapping") or 0.0),
        sliding_window_size=int(hf.get("sliding_window") or 0),
        sliding_window_pattern=layer_pattern(hf, where, default_pattern),
    )


def sandwich_fields(keys: dict) -> dict:
    """The inverse of sandwich_keys, with the soft caps and the (global) RoPE."""
    pattern, n = keys["sliding_window_pattern"], keys["base_num_decoder_layers"]
    return {
        "query_pre_attn_scalar": number(keys["query_pre_attn_scalar"] or keys["head_dim"]),
        "attn_logit_softcapping": keys["attn_logits_soft_cap"] or None,
        "final_logit_softcapping": keys["final_logits_soft_cap"] or None,
        "sliding_window": keys["sliding_window_size"] or None,
        "layer_types": layer_types(n, pattern),
        "rope_parameters": hf_rope(keys),
    }


def moe_keys(hf: dict, where: str, fields: dict) -> dict:
    """An MoE family's RoPE (yarn allowed), its `fields` ({our key: config.json field}) and top-k."""
    require(not hf.get("use_sliding_window"), f"{where}: use_sliding_window=true is not supported")
    keys = {key: hf.get(field) or 0 for key, field in fields.items()}
    keys["num_experts"] = keys["num_experts"] or hf.get("num_experts", 0)  # qwen3_moe files before 5.x
    keys["num_experts_per_tok"] = hf["num_experts_per_tok"]
    return {**rope_keys(rope_parameters(hf), where, MOE_ROPE_TYPES), **keys}


def moe_fields(keys: dict, fields: dict) -> dict:
    """The inverse of moe_keys."""
    out = {field: keys[key] for key, field in fields.items()}
    return {"rope_parameters": hf_rope(keys), **out, "num_experts_per_tok": keys["num_experts_per_tok"]}


def hf_config_to_keys(hf: dict, where: str = "config.json") -> dict:
    """Our model keys for a config.json dict. Raises ConfigError for an unsupported model or feature."""
    hf = text_config(hf)
    spec = registry.by_model_type(hf.get("model_type"))
    if spec is None:
        arch = ", ".join(hf.get("architectures") or []) or "no architectures listed"
        supported = [t for s in registry.all_families() if s.hf for t in (s.hf.model_type, *s.hf.aliases)]
        raise ConfigError(
            f"{where}: model_type {hf.get('model_type')!r} ({arch}) is not supported; "
            f"supported: {', '.join(supported)}"
        )
    fam = spec.hf
    for flag in ("attention_bias", "mlp_bias"):
        require(not hf.get(flag), f"{where}: {flag}=true is not supported for {hf['model_type']}")
    act = hf.get(fam.act_key) or hf.get("hidden_act") or fam.default_act
    require(act in ACTIVATIONS, f"{where}: hidden_act={act!r} is not supported ({', '.join(ACTIVATIONS)})")
    heads = hf["num_attention_heads"]
    hf = {**hf, "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads}
    keys = {
        "decoder_block": spec.name,
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
    return {**keys, **fam.keys_from_hf(hf, where)}


def hf_rope(keys: dict) -> dict:
    rope = {"rope_type": keys["rope_type"], "rope_theta": float(keys["rope_max_timescale"])}
    if keys["rope_type"] == "linear":
        rope["factor"] = float(keys["rope_scaling_factor"])
    if keys["rope_type"] == "llama3":
        rope.update({hf_key: keys[key] for hf_key, key in _LLAMA3_KEYS.items()})
    if keys["rope_type"] == "yarn":
        rope.update({hf_key: keys[key] for hf_key, key in _YARN_KEYS.items()})
        rope.update({hf_key: keys[key] for hf_key, (key, _) in _YARN_OPTIONAL.items()})
    return rope


def number(x: float):
    """An int when integral: transformers' strict config classes type query_pre_attn_scalar as int."""
    return int(x) if float(x).is_integer() else float(x)


def keys_to_hf_config(keys: dict, source: dict | None, dtype: str, token_ids: dict) -> dict:
    """config.json (transformers 5.x format) for our model keys (base.yml defaults filled in).

    source: the config.json the checkpoint was converted from, if any; its other fields (ids, max positions,
    initializer range, ...) are kept (a multimodal source gives its text_config: the export is the language
    model). token_ids: {"bos_id", "eos_id", "pad_id"} for a model without a source.
    """
    block = keys["decoder_block"]
    spec = registry.family(block)
    with_hf = [s.name for s in registry.all_families() if s.hf]
    require(
        spec.hf is not None, f"decoder_block={block!r} has no Hugging Face equivalent ({', '.join(with_hf)})"
    )
    fam = spec.hf
    for key, value in {**_COMMON, **fam.fixed}.items():
        require(keys[key] == value, f"{key}={keys[key]!r}: Hugging Face {fam.model_type} needs {value!r}")
    acts = list(keys["mlp_activations"])
    require(
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
    )
    out.update(fam.fields_to_hf(keys))  # may replace a common field (Mixtral's intermediate_size)
    return dict(sorted(out.items()))
