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
_SOFTMAX = dict(moe_score_func="softmax", moe_score_correction_bias=False, moe_group_score="max")
_COMMON = dict(normalization_type="rmsnorm", use_bias=False, trainable_position_size=0)
# Our decoder_block -> its Hugging Face form. Llama 2 and Llama 3 share "llama2" (Llama 3 is rope_type llama3).
FAMILIES = {
    "llama2": HFFamily("llama", "LlamaForCausalLM", "hidden_act", "silu", False, _PLAIN),
    "mistral": HFFamily("mistral", "MistralForCausalLM", "hidden_act", "silu", False, _PLAIN),
    "qwen3": HFFamily("qwen3", "Qwen3ForCausalLM", "hidden_act", "silu", False, dict(_PLAIN, use_qk_norm=True)),
    "gemma": HFFamily("gemma", "GemmaForCausalLM", "hidden_act", "gelu_pytorch_tanh", True, dict(_GEMMA, use_qk_norm=False)),
    "gemma2": HFFamily("gemma2", "Gemma2ForCausalLM", "hidden_activation", "gelu_pytorch_tanh", True, dict(_SANDWICH, use_qk_norm=False)),
    "gemma3": HFFamily("gemma3_text", "Gemma3ForCausalLM", "hidden_activation", "gelu_pytorch_tanh", True, dict(_SANDWICH, use_qk_norm=True)),
    # Mixtral always renormalises the top-k probabilities; V3 routes by sigmoid with a correction bias.
    "mixtral": HFFamily("mixtral", "MixtralForCausalLM", "hidden_act", "silu", False, dict(_PLAIN, norm_topk_prob=True, **_SOFTMAX)),
    "qwen3_moe": HFFamily("qwen3_moe", "Qwen3MoeForCausalLM", "hidden_act", "silu", False, dict(_PLAIN, use_qk_norm=True, **_SOFTMAX)),
    "deepseek2": HFFamily("deepseek_v2", "DeepseekV2ForCausalLM", "hidden_act", "silu", False, dict(_PLAIN, **_SOFTMAX)),
    "deepseek3": HFFamily("deepseek_v3", "DeepseekV3ForCausalLM", "hidden_act", "silu", False, dict(_PLAIN, moe_score_func="sigmoid", moe_score_correction_bias=True, moe_group_score="top2_sum")),
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
_ROPE_TYPES = ("default", "linear", "llama3")
_MOE_ROPE_TYPES = _ROPE_TYPES + ("yarn",)  # the MoE blocks' rope takes yarn (DeepSeek's long context)
# The MoE families: our keys <- their config.json fields, read and written the same way.
_MOE_FIELDS = {
    "mixtral": {"num_experts": "num_local_experts", "base_moe_mlp_dim": "intermediate_size"},
    "qwen3_moe": {"num_experts": "num_local_experts", "base_moe_mlp_dim": "moe_intermediate_size"},
    "deepseek2": {
        "num_experts": "n_routed_experts",
        "base_moe_mlp_dim": "moe_intermediate_size",
        "num_shared_experts": "n_shared_experts",
        "first_num_dense_layers": "first_k_dense_replace",
        "kv_lora_rank": "kv_lora_rank",
        "qk_nope_head_dim": "qk_nope_head_dim",
        "qk_rope_head_dim": "qk_rope_head_dim",
        "v_head_dim": "v_head_dim",
    },
}
_MOE_FIELDS["deepseek3"] = _MOE_FIELDS["deepseek2"]


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def text_config(hf: dict) -> dict:
    """The language model's config: a multimodal Gemma 3 config's text_config, else the config itself."""
    if hf.get("model_type") == "gemma3" and "text_config" in hf:
        ids = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in hf}
        return {**ids, **hf["text_config"], "model_type": "gemma3_text"}
    return hf


def _rope_keys(params: dict, where: str, types: tuple = _ROPE_TYPES) -> dict:
    """Our rope keys for one transformers 5.x rope_parameters dict whose rope_type is one of `types`."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    _require(rope_type in types, f"{where}: rope_type={rope_type!r} is not supported ({', '.join(types)})")
    keys = {"rope_type": rope_type, "rope_max_timescale": float(params["rope_theta"])}
    if rope_type == "linear":
        keys["rope_scaling_factor"] = float(params["factor"])
    if rope_type == "llama3":
        for hf_key, key in _LLAMA3_KEYS.items():
            _require(hf_key in params, f"{where}: rope_parameters lacks {hf_key!r} for rope_type 'llama3'")
            keys[key] = params[hf_key]
    if rope_type == "yarn":
        for hf_key, key in _YARN_KEYS.items():
            _require(hf_key in params, f"{where}: rope_parameters lacks {hf_key!r} for rope_type 'yarn'")
            keys[key] = params[hf_key]
        keys.update({key: float(params.get(hf_key) or d) for hf_key, (key, d) in _YARN_OPTIONAL.items()})
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


def _moe_keys(block: str, hf: dict, where: str) -> dict:
    """Routing, expert and (DeepSeek) latent-attention keys of an MoE family's config.json."""
    keys = {key: hf.get(field) or 0 for key, field in _MOE_FIELDS[block].items()}
    keys["num_experts"] = keys["num_experts"] or hf.get("num_experts", 0)  # qwen3_moe files before 5.x
    keys["num_experts_per_tok"] = hf["num_experts_per_tok"]
    if block == "mixtral":
        return {**keys, "sliding_window_size": int(hf.get("sliding_window") or 0)}
    if block == "qwen3_moe":
        _require(
            not hf.get("mlp_only_layers") and hf.get("decoder_sparse_step", 1) == 1,
            f"{where}: qwen3_moe with dense layers (mlp_only_layers, decoder_sparse_step) is not supported",
        )
        return {**keys, "norm_topk_prob": bool(hf.get("norm_topk_prob", False))}
    freq = hf.get("moe_layer_freq", 1)
    _require(freq == 1, f"{where}: moe_layer_freq={freq} is not supported (expected 1)")
    keys.update(
        q_lora_rank=int(hf.get("q_lora_rank") or 0),
        head_dim=hf["qk_nope_head_dim"] + hf["qk_rope_head_dim"],
        base_num_kv_heads=hf["num_attention_heads"],  # MLA has no separate kv heads
        rope_interleave=bool(hf.get("rope_interleave", True)),  # V2 always rotates adjacent pairs
        routed_scaling_factor=float(hf.get("routed_scaling_factor") or 1.0),
    )
    if block == "deepseek3":
        return {
            **keys,
            "moe_n_group": hf.get("n_group") or 1,
            "moe_topk_group": hf.get("topk_group") or 1,
            "norm_topk_prob": bool(hf.get("norm_topk_prob", True)),
        }
    method = hf.get("topk_method", "greedy")
    _require(
        method in ("greedy", "group_limited_greedy"),
        f"{where}: topk_method={method!r} is not supported (greedy, group_limited_greedy)",
    )
    grouped = method == "group_limited_greedy"
    # V2's router never renormalises the top-k weights, whatever norm_topk_prob says.
    return {
        **keys,
        "norm_topk_prob": False,
        "moe_n_group": hf["n_group"] if grouped else 1,
        "moe_topk_group": hf["topk_group"] if grouped else 1,
    }


def _family_keys(block: str, hf: dict, where: str) -> dict:
    """The keys of each family's own features (windows, soft caps, local/global rope, experts)."""
    rope = _rope_parameters(hf)
    if block in _MOE_FIELDS:
        _require(not hf.get("use_sliding_window"), f"{where}: use_sliding_window=true is not supported")
        return {**_rope_keys(rope, where, _MOE_ROPE_TYPES), **_moe_keys(block, hf, where)}
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
    if keys["rope_type"] == "yarn":
        rope.update({hf_key: keys[key] for hf_key, key in _YARN_KEYS.items()})
        rope.update({hf_key: keys[key] for hf_key, (key, _) in _YARN_OPTIONAL.items()})
    return rope


def _number(x: float):
    """An int when integral: transformers' strict config classes type query_pre_attn_scalar as int."""
    return int(x) if float(x).is_integer() else float(x)


def _family_fields(block: str, keys: dict) -> dict:
    """config.json fields of each family's own features (inverse of _family_keys)."""
    rope = _hf_rope(keys)
    window = keys["sliding_window_size"]
    if block in _MOE_FIELDS:
        return {"rope_parameters": rope, **_moe_fields(block, keys)}
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


def _moe_fields(block: str, keys: dict) -> dict:
    """config.json fields of an MoE family (inverse of _moe_keys)."""
    fields = {field: keys[key] for key, field in _MOE_FIELDS[block].items()}
    fields["num_experts_per_tok"] = keys["num_experts_per_tok"]
    window = keys["sliding_window_size"]
    if block == "mixtral":
        # Mixtral's intermediate_size is the experts' width; our base_mlp_dim is unused there.
        return {**fields, "sliding_window": window or None}
    _require(not window, f"sliding_window_size={window}: Hugging Face {block} has no sliding window")
    if block == "qwen3_moe":
        return {**fields, "norm_topk_prob": bool(keys["norm_topk_prob"]), "use_sliding_window": False,
                "decoder_sparse_step": 1, "mlp_only_layers": []}  # fmt: skip
    _require(
        keys["head_dim"] == keys["qk_nope_head_dim"] + keys["qk_rope_head_dim"],
        f"head_dim={keys['head_dim']}: Hugging Face {block} needs qk_nope_head_dim + qk_rope_head_dim",
    )
    _require(
        keys["base_num_kv_heads"] == keys["base_num_query_heads"],
        f"base_num_kv_heads={keys['base_num_kv_heads']}: Hugging Face {block} needs one kv head per query head",
    )
    fields.update(
        q_lora_rank=keys["q_lora_rank"] or None,
        routed_scaling_factor=float(keys["routed_scaling_factor"]),
        n_group=keys["moe_n_group"],
        topk_group=keys["moe_topk_group"],
        moe_layer_freq=1,
        head_dim=keys["qk_rope_head_dim"],  # what transformers sets; it reads qk_*_head_dim
    )
    if block == "deepseek3":
        return {
            **fields,
            "norm_topk_prob": bool(keys["norm_topk_prob"]),
            "rope_interleave": keys["rope_interleave"],
        }
    _require(keys["rope_interleave"], f"rope_interleave=False: Hugging Face {block} always interleaves")
    _require(not keys["norm_topk_prob"], f"norm_topk_prob=true: Hugging Face {block} never renormalises")
    grouped = keys["moe_n_group"] > 1
    return {**fields, "topk_method": "group_limited_greedy" if grouped else "greedy"}


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
    )
    out.update(_family_fields(block, keys))  # may replace a common field (Mixtral's intermediate_size)
    return dict(sorted(out.items()))
