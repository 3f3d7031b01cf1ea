"""Llama family block (Llama 2, Llama 3/3.1/3.3, Mistral): pre-norm RMSNorm, RoPE attention with GQA and an
optional sliding window, and a gated MLP. Mistral is this block with sliding_window_size set."""

import flax.linen as nn

from MaxText.config.derived import ModelConfig
from MaxText.layers.attention import Attention
from MaxText.layers.common import constrain, dtype_of, precision_of
from MaxText.layers.embeddings import RopeConfig
from MaxText.layers.linears import MlpBlock
from MaxText.layers.normalizations import RMSNorm
from MaxText.models.registry import Stack

_ACT = ("activation_batch", "activation_length", "activation_embed")


def rope_config(cfg: ModelConfig) -> RopeConfig:
    return RopeConfig(
        head_dim=cfg.head_dim,
        theta=cfg.rope_max_timescale,
        rope_type=cfg.rope_type,
        factor=cfg.rope_scaling_factor,
        low_freq_factor=cfg.rope_low_freq_factor,
        high_freq_factor=cfg.rope_high_freq_factor,
        original_max_position=cfg.rope_original_max_position_embeddings,
    )


class LlamaDecoderLayer(nn.Module):
    """One Llama layer: x + attn(norm(x)), then + mlp(norm(x)). x [B, T, D] -> [B, T, D]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, segment_ids, mode, cache=None):
        cfg = self.config
        dtype, wdtype = dtype_of(cfg.dtype), dtype_of(cfg.weight_dtype)
        norm = dict(epsilon=cfg.normalization_layer_epsilon, dtype=dtype, weight_dtype=wdtype)
        x = constrain(x, _ACT)
        h = RMSNorm(name="pre_self_attention_layer_norm", **norm)(x)
        attn, cache = Attention(
            num_query_heads=cfg.num_query_heads,
            num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            rope=rope_config(cfg),
            kernel=cfg.attention,
            sliding_window=cfg.sliding_window_size,
            block_size=cfg.flash_block_size,
            dtype=dtype,
            weight_dtype=wdtype,
            precision=precision_of(cfg.matmul_precision),
            name="self_attention",
        )(h, positions, segment_ids, mode, cache)
        deterministic = mode != "train" or cfg.dropout_rate == 0.0
        x = x + nn.Dropout(cfg.dropout_rate)(attn, deterministic=deterministic)
        h = RMSNorm(name="post_self_attention_layer_norm", **norm)(x)
        mlp = MlpBlock(
            mlp_dim=cfg.mlp_dim,
            activations=cfg.mlp_activations,
            dtype=dtype,
            weight_dtype=wdtype,
            precision=precision_of(cfg.matmul_precision),
            name="mlp",
        )(h)
        x = x + nn.Dropout(cfg.dropout_rate)(mlp, deterministic=deterministic)
        return constrain(x, _ACT), cache


def stacks(cfg: ModelConfig) -> list:
    return [Stack("layers", LlamaDecoderLayer, cfg.num_decoder_layers)]
