"""Gemma 2 block. The scanned unit is a local/global pair (sliding_window_pattern=2): a sliding-window layer
then a global one, each with four `1 + w` RMSNorms (pre/post attention, pre/post MLP), attention soft cap
(attn_logits_soft_cap) and score scale query_pre_attn_scalar**-0.5. The model adds sqrt(D) embedding scaling
and the final logit soft cap.

Parameters: decoder/layers/{local,global}/{pre_self_attention_norm, self_attention/..., post_self_attention_norm,
pre_ffw_norm, mlp/..., post_ffw_norm}; Hugging Face layer 2u is unit u's "local", 2u+1 its "global".
"""

from MaxText.config.derived import ModelConfig
from MaxText.models.transformer_layer import GEMMA_NORMS, DecoderLayer, LocalGlobalGroup, local_global_stacks


class Gemma2DecoderLayer(DecoderLayer):
    """One Gemma 2 layer (local unless global_attention)."""

    NORM_NAMES = GEMMA_NORMS


class Gemma2Block(LocalGlobalGroup):
    """A local layer then a global layer (with the default pattern of 2)."""

    LAYER = Gemma2DecoderLayer


def stacks(cfg: ModelConfig) -> list:
    return local_global_stacks(cfg, Gemma2Block, Gemma2DecoderLayer)
