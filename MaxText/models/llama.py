"""Llama family block (Llama 2, Llama 3/3.1/3.3, Mistral): pre-norm RMSNorm, RoPE attention with GQA and an
optional sliding window (Mistral: sliding_window_size on every layer), and a gated MLP.

Parameters per layer: pre_self_attention_layer_norm, self_attention/{query,key,value,out},
post_self_attention_layer_norm (the pre-MLP norm, MaxText's name), mlp/{wi_0,wi_1,wo}.
"""

from MaxText.config.derived import ModelConfig
from MaxText.models.transformer_layer import LLAMA_NORMS, DecoderLayer, single_layer_stacks


class LlamaDecoderLayer(DecoderLayer):
    """One Llama layer: x + attn(norm(x)), then + mlp(norm(x)). x [B, T, D] -> [B, T, D]."""

    NORM_NAMES = LLAMA_NORMS


def stacks(cfg: ModelConfig) -> list:
    return single_layer_stacks(cfg, LlamaDecoderLayer)
