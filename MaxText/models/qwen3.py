"""Qwen 3 dense block: the Llama layer with qk-norm (use_qk_norm: a plain RMSNorm over the head dim of each
query and key head, before RoPE). Parameter names follow MaxText's Qwen 3 (Llama's, plus
self_attention/query_norm/scale and self_attention/key_norm/scale [H])."""

from MaxText.config.derived import ModelConfig
from MaxText.models.transformer_layer import LLAMA_NORMS, DecoderLayer, single_layer_stacks


class Qwen3DecoderLayer(DecoderLayer):
    """One Qwen 3 layer: x + attn(norm(x)) with normalised q/k heads, then + mlp(norm(x))."""

    NORM_NAMES = LLAMA_NORMS


def stacks(cfg: ModelConfig) -> list:
    return single_layer_stacks(cfg, Qwen3DecoderLayer)
