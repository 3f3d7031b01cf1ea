"""Gemma 3 (text) block. The scanned unit is a group of sliding_window_pattern=6 layers: five sliding-window
layers with the local RoPE base (local_rope_max_timescale, unscaled), then one global layer with the global
base and its scaling (rope_type linear, factor 8 for 4b and larger). Layers have qk-norm and four norms, all
`1 + w` RMSNorms; no soft caps. Layers left after the last full group (26 = 4 x 6 + 2) are local and form
the stack "tail".

Parameters: decoder/layers/{local_0..local_4,global}/... (Hugging Face layer 6u + j) and decoder/tail/...
(Hugging Face layer 6G + t for G full groups).
"""

from MaxText.config.derived import ModelConfig
from MaxText.models import hf_configs as hfc
from MaxText.models import hf_mappings
from MaxText.models.spec import FamilySpec, HFSpec, Traits
from MaxText.models.transformer_layer import GEMMA_NORMS, DecoderLayer, LocalGlobalGroup, local_global_stacks


class Gemma3DecoderLayer(DecoderLayer):
    """One Gemma 3 layer (local unless global_attention)."""

    NORM_NAMES = GEMMA_NORMS


class Gemma3Block(LocalGlobalGroup):
    """Five local layers then a global one (with the default pattern of 6)."""

    LAYER = Gemma3DecoderLayer


def stacks(cfg: ModelConfig) -> list:
    return local_global_stacks(cfg, Gemma3Block, Gemma3DecoderLayer)


def _text_config(hf: dict) -> dict:
    """A multimodal Gemma 3 config's language model (its text_config, with the token ids on top)."""
    if hf.get("model_type") == "gemma3" and "text_config" in hf:
        ids = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in hf}
        return {**ids, **hf["text_config"], "model_type": "gemma3_text"}
    return hf


def _rope(hf: dict) -> dict:
    """{"full_attention": ..., "sliding_attention": ...}; older files keep rope_local_base_freq on top."""
    rope = hfc.rope_parameters(hf)
    if hf.get("rope_parameters"):
        return rope
    local = {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 10000.0)}
    return {"full_attention": rope, "sliding_attention": local}


def _keys(hf: dict, where: str) -> dict:
    keys = hfc.sandwich_keys(hf, where, default_pattern=6)
    # transformers' Gemma 3 attention ignores attn_logit_softcapping (the released models set none).
    keys["attn_logits_soft_cap"] = 0.0
    rope = _rope(hf)
    local = hfc.rope_keys(rope["sliding_attention"], f"{where} (sliding_attention)")
    hfc.require(
        local["rope_type"] == "default", f"{where}: rope scaling on sliding_attention layers is not supported"
    )
    keys["local_rope_max_timescale"] = local["rope_max_timescale"]
    return {**keys, **hfc.rope_keys(rope["full_attention"], f"{where} (full_attention)")}


def _fields(keys: dict) -> dict:
    fields = hfc.sandwich_fields(keys)
    local = {
        "rope_type": "default",
        "rope_theta": float(keys["local_rope_max_timescale"] or keys["rope_max_timescale"]),
    }
    fields["rope_parameters"] = {"full_attention": fields["rope_parameters"], "sliding_attention": local}
    return fields


FAMILIES = (
    FamilySpec(
        "gemma3",
        stacks,
        traits=Traits(local_global=True),
        hf=HFSpec(
            "gemma3_text", "Gemma3ForCausalLM", "hidden_activation", "gelu_pytorch_tanh", True,
            dict(hfc.SANDWICH, use_qk_norm=True), _keys, _fields, (GEMMA_NORMS, hf_mappings.HF_NORMS_SANDWICH),
            hf_mappings.DENSE, aliases=("gemma3",), text_config=_text_config,
        ),
        add_bos_eos=(True, False),
    ),
)  # fmt: skip
