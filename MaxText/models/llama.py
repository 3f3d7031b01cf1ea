"""Llama family block (Llama 2, Llama 3/3.1/3.3, Mistral): pre-norm RMSNorm, RoPE attention with GQA and an
optional sliding window (Mistral: sliding_window_size on every layer), and a gated MLP.

Parameters per layer: pre_self_attention_layer_norm, self_attention/{query,key,value,out},
post_self_attention_layer_norm (the pre-MLP norm, MaxText's name), mlp/{wi_0,wi_1,wo}.
"""

from MaxText.config.derived import ModelConfig
from MaxText.models import hf_configs as hfc
from MaxText.models import hf_mappings
from MaxText.models.spec import FamilySpec, HFSpec
from MaxText.models.transformer_layer import LLAMA_NORMS, DecoderLayer, single_layer_stacks


class LlamaDecoderLayer(DecoderLayer):
    """One Llama layer: x + attn(norm(x)), then + mlp(norm(x)). x [B, T, D] -> [B, T, D]."""

    NORM_NAMES = LLAMA_NORMS


def stacks(cfg: ModelConfig) -> list:
    return single_layer_stacks(cfg, LlamaDecoderLayer)


def _mistral_keys(hf: dict, where: str) -> dict:
    return {
        **hfc.rope_keys(hfc.rope_parameters(hf), where),
        "sliding_window_size": int(hf.get("sliding_window") or 0),
    }


def _mistral_fields(keys: dict) -> dict:
    return {"rope_parameters": hfc.hf_rope(keys), "sliding_window": keys["sliding_window_size"] or None}


_NORMS = (LLAMA_NORMS, hf_mappings.HF_NORMS_LLAMA)
# Llama 2 and Llama 3 share "llama2" (Llama 3 is rope_type llama3). Both prepend BOS when encoding.
FAMILIES = (
    FamilySpec(
        "llama2",
        stacks,
        hf=HFSpec(
            "llama", "LlamaForCausalLM", "hidden_act", "silu", False, hfc.PLAIN,
            hfc.no_window_keys, hfc.no_window_fields("llama2"), _NORMS, hf_mappings.DENSE,
        ),
        add_bos_eos=(True, False),
    ),
    FamilySpec(
        "mistral",
        stacks,
        hf=HFSpec(
            "mistral", "MistralForCausalLM", "hidden_act", "silu", False, hfc.PLAIN,
            _mistral_keys, _mistral_fields, _NORMS, hf_mappings.DENSE,
        ),
        add_bos_eos=(True, False),
    ),
)  # fmt: skip
