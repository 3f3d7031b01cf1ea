"""Qwen 3 MoE block: the Qwen 3 layer (qk-norm) with a sparse MoE in place of the MLP: softmax router, top-k,
renormalised when norm_topk_prob (true for the released models). Every layer is MoE.

Parameters per layer: Qwen 3's attention (with query_norm/key_norm) and norms, mlp/gate/kernel [D, E],
mlp/{wi_0,wi_1} [E, D, F], mlp/wo [E, F, D].
"""

from MaxText.config.derived import ModelConfig
from MaxText.models.moe_layer import MoeDecoderLayer, moe_stacks
from MaxText.models.qwen3 import Qwen3DecoderLayer


class Qwen3MoeDecoderLayer(MoeDecoderLayer):
    NORM_NAMES = Qwen3DecoderLayer.NORM_NAMES


def stacks(cfg: ModelConfig) -> list:
    return moe_stacks(cfg, Qwen3DecoderLayer, Qwen3MoeDecoderLayer)
