"""Mixtral block: the Llama layer (RMSNorm, RoPE, GQA, optional sliding window) with a sparse MoE in place of
the MLP: softmax router over num_experts, top-k, the chosen probabilities renormalised (norm_topk_prob).

Parameters per layer: Llama's attention and norms, mlp/gate/kernel [D, E], mlp/{wi_0,wi_1} [E, D, F],
mlp/wo [E, F, D].
"""

from MaxText.config.derived import ModelConfig
from MaxText.models.moe_layer import MoeDecoderLayer, moe_stacks
from MaxText.models.transformer_layer import LLAMA_NORMS, DecoderLayer


class MixtralDecoderLayer(MoeDecoderLayer):
    NORM_NAMES = LLAMA_NORMS


def stacks(cfg: ModelConfig) -> list:
    return moe_stacks(cfg, DecoderLayer, MixtralDecoderLayer)
