"""Gemma 2 block. The scanned unit is a local/global pair (sliding_window_pattern=2): a sliding-window layer
then a global one, each with four `1 + w` RMSNorms (pre/post attention, pre/post MLP), attention soft cap
(attn_logits_soft_cap) and score scale query_pre_attn_scalar**-0.5. The model adds sqrt(D) embedding scaling
and the final logit soft cap.

Parameters: decoder/layers/{local,global}/{pre_self_attention_norm, self_attention/..., post_self_attention_norm,
pre_ffw_norm, mlp/..., post_ffw_norm}; Hugging Face layer 2u is unit u's "local", 2u+1 its "global".
"""

from MaxText.config.derived import ModelConfig
from MaxText.models import hf_configs as hfc
from MaxText.models import hf_mappings
from MaxText.models.spec import FamilySpec, HFSpec, Traits
from MaxText.models.transformer_layer import GEMMA_NORMS, DecoderLayer, LocalGlobalGroup, local_global_stacks


class Gemma2DecoderLayer(DecoderLayer):
    """One Gemma 2 layer (local unless global_attention)."""

    NORM_NAMES = GEMMA_NORMS


class Gemma2Block(LocalGlobalGroup):
    """A local layer then a global layer (with the default pattern of 2)."""

    LAYER = Gemma2DecoderLayer


def stacks(cfg: ModelConfig) -> list:
    return local_global_stacks(cfg, Gemma2Block, Gemma2DecoderLayer)


def _keys(hf: dict, where: str) -> dict:
    keys = hfc.sandwich_keys(hf, where, default_pattern=2)
    keys["attn_logits_soft_cap"] = float(hf.get("attn_logit_softcapping") or 0.0)
    return {**keys, **hfc.rope_keys(hfc.rope_parameters(hf), where)}


FAMILIES = (
    FamilySpec(
        "gemma2",
        stacks,
        traits=Traits(local_global=True),
        hf=HFSpec(
            "gemma2", "Gemma2ForCausalLM", "hidden_activation", "gelu_pytorch_tanh", True,
            dict(hfc.SANDWICH, use_qk_norm=False), _keys, hfc.sandwich_fields,
            (GEMMA_NORMS, hf_mappings.HF_NORMS_SANDWICH), hf_mappings.DENSE,
        ),
        add_bos_eos=(True, False),
    ),
)  # fmt: skip
