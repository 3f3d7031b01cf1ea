"""OLMo 3 block (Olmo3ForCausalLM). Norms sit after the sublayers rather than before (use_pre_norms false):
h = x + norm(attn(x)); out = h + norm(mlp(h)). qk-norm covers the whole projection, one RMSNorm over the
N*H query and one over the K*H key features (qk_norm_across_heads). Layers come in groups of
sliding_window_pattern = 4: three sliding-window layers with the plain RoPE of `sliding_attention`
(local_rope_max_timescale), then a full-attention layer with `full_attention`'s RoPE, which carries the
published YaRN scaling. Layers left after the last full group are sliding and form the stack "tail".

Parameters: decoder/layers/{local_0,local_1,local_2,global}/{self_attention/{query,key,value,out}/kernel,
self_attention/{query_norm [N*H], key_norm [K*H]}/scale, post_self_attention_norm/scale,
mlp/{wi_0,wi_1,wo}/kernel, post_ffw_norm/scale} (Hugging Face layer 4u + j) and decoder/tail/...
"""

from types import SimpleNamespace

from MaxText.config.derived import ModelConfig
from MaxText.models import hf_configs as hfc
from MaxText.models import hf_mappings
from MaxText.models.spec import FamilySpec, HFSpec, Traits
from MaxText.models.transformer_layer import LLAMA_NORMS, DecoderLayer, LocalGlobalGroup, local_global_stacks
from MaxText.models.transformer_layer import yarn_attention_factor

# transformers' Olmo3Config.default_theta: what a legacy file's sliding layers get (see _rope).
_DEFAULT_THETA = 500000.0


class Olmo3DecoderLayer(DecoderLayer):
    """One OLMo 3 layer (sliding unless global_attention); only its post norms exist."""

    NORM_NAMES = LLAMA_NORMS


class Olmo3Block(LocalGlobalGroup):
    """Three sliding-window layers then a full-attention one (with the published pattern of 4)."""

    LAYER = Olmo3DecoderLayer


def stacks(cfg: ModelConfig) -> list:
    return local_global_stacks(cfg, Olmo3Block, Olmo3DecoderLayer)


def _rope(hf: dict, where: str) -> dict:
    """{"full_attention": ..., "sliding_attention": ...}. The released files predate 5.x and keep rope_theta
    and rope_scaling on top; transformers gives those to the full layers and its default_theta to the
    sliding ones (the two agree at the released 5e5)."""
    if hf.get("rope_parameters"):
        rope = hf["rope_parameters"]
        hfc.require(
            {"full_attention", "sliding_attention"} <= set(rope),
            f"{where}: olmo3 rope_parameters needs full_attention and sliding_attention entries",
        )
        return rope
    full = {**(hf.get("rope_scaling") or {}), "rope_theta": hf.get("rope_theta", _DEFAULT_THETA)}
    return {
        "full_attention": full,
        "sliding_attention": {"rope_type": "default", "rope_theta": _DEFAULT_THETA},
    }


def _attention_factor(keys: dict) -> float:
    """YaRN's factor on cos/sin as the model computes it (and transformers derives it when unstated)."""
    names = ("rope_type", "rope_scaling_factor", "rope_yarn_mscale", "rope_yarn_mscale_all_dim")
    return yarn_attention_factor(SimpleNamespace(**{k: keys[k] for k in names}))


def _full_rope_keys(params: dict, where: str) -> dict:
    keys = hfc.rope_keys(params, f"{where} (full_attention)", hfc.MOE_ROPE_TYPES)
    if keys["rope_type"] != "yarn":
        return keys
    # The released files state attention_factor; it is the derived 0.1 ln(factor) + 1, which we compute.
    given, derived = params.get("attention_factor"), _attention_factor(keys)
    hfc.require(
        given is None or abs(given - derived) <= 1e-12 * derived,
        f"{where}: yarn attention_factor={given} is not supported (only the derived {derived!r})",
    )
    # transformers 5.x reads truncate from the top of a per-layer-type rope_parameters, so always truncates.
    hfc.require(params.get("truncate", True), f"{where}: yarn truncate=false is not supported")
    return keys


def _keys(hf: dict, where: str) -> dict:
    rope = _rope(hf, where)
    local = hfc.rope_keys(rope["sliding_attention"], f"{where} (sliding_attention)")
    hfc.require(
        local["rope_type"] == "default", f"{where}: rope scaling on sliding_attention layers is not supported"
    )
    return {
        **_full_rope_keys(rope["full_attention"], where),
        "local_rope_max_timescale": local["rope_max_timescale"],
        "sliding_window_size": int(hf.get("sliding_window") or 0),
        "sliding_window_pattern": hfc.layer_pattern(hf, where, 4),
    }


def _fields(keys: dict) -> dict:
    full = hfc.hf_rope(keys)
    if keys["rope_type"] == "yarn":
        # Written as the released files state it: attention_factor rather than unset (0) mscales.
        full = {k: v for k, v in full.items() if v or k not in ("mscale", "mscale_all_dim")}
        full["attention_factor"] = _attention_factor(keys)
    local = {
        "rope_type": "default",
        "rope_theta": float(keys["local_rope_max_timescale"] or keys["rope_max_timescale"]),
    }
    return {
        "sliding_window": keys["sliding_window_size"] or None,
        "layer_types": hfc.layer_types(keys["base_num_decoder_layers"], keys["sliding_window_pattern"]),
        "rope_parameters": {"full_attention": full, "sliding_attention": local},
    }


_FIXED = dict(
    hfc.PLAIN, use_qk_norm=True, qk_norm_across_heads=True, use_pre_norms=False, use_post_attn_norm=True,
    use_post_ffw_norm=True, query_pre_attn_scalar=0.0, attn_logits_soft_cap=0.0, final_logits_soft_cap=0.0,
)  # fmt: skip

FAMILIES = (
    FamilySpec(
        "olmo3",
        stacks,
        traits=Traits(local_global=True),
        hf=HFSpec(
            "olmo3", "Olmo3ForCausalLM", "hidden_act", "silu", False, _FIXED, _keys, _fields,
            (LLAMA_NORMS, hf_mappings.HF_NORMS_SANDWICH), hf_mappings.DENSE,
        ),
    ),
)  # fmt: skip
