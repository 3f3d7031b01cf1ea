"""Gemma (1) block: pre-norm layers with `x_hat * (1 + w)` RMSNorms (normalization_scale_offset=1), a
gelu-tanh gated MLP, MQA/MHA with RoPE; the model ties embeddings and scales them by sqrt(D)
(scale_embeddings_by_sqrt_dim). Parameter names follow MaxText's Gemma: pre_self_attention_norm,
self_attention/..., pre_ffw_norm, mlp/{wi_0,wi_1,wo}."""

from MaxText.config.derived import ModelConfig
from MaxText.models.transformer_layer import GEMMA_NORMS, DecoderLayer, single_layer_stacks


class GemmaDecoderLayer(DecoderLayer):
    """One Gemma layer: x + attn(norm(x)), then + mlp(norm(x))."""

    NORM_NAMES = GEMMA_NORMS


def stacks(cfg: ModelConfig) -> list:
    return single_layer_stacks(cfg, GemmaDecoderLayer)
