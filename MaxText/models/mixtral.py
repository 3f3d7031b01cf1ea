"""Mixtral block: the Llama layer (RMSNorm, RoPE, GQA, optional sliding window) with a sparse MoE in place of
the MLP: softmax router over num_experts, top-k, the chosen probabilities renormalised (norm_topk_prob).

Parameters per layer: Llama's attention and norms, mlp/gate/kernel [D, E], mlp/{wi_0,wi_1} [E, D, F],
mlp/wo [E, F, D].
"""

from MaxText.config.derived import ModelConfig
from MaxText.models.moe_layer import MoeDecoderLayer, moe_stacks
from MaxText.models import hf_configs as hfc
from MaxText.models import hf_mappings
from MaxText.models.spec import FamilySpec, HFSpec, Traits
from MaxText.models.transformer_layer import LLAMA_NORMS, DecoderLayer


class MixtralDecoderLayer(MoeDecoderLayer):
    NORM_NAMES = LLAMA_NORMS


def stacks(cfg: ModelConfig) -> list:
    return moe_stacks(cfg, DecoderLayer, MixtralDecoderLayer)


_FIELDS = {"num_experts": "num_local_experts", "base_moe_mlp_dim": "intermediate_size"}


def _keys(hf: dict, where: str) -> dict:
    return {**hfc.moe_keys(hf, where, _FIELDS), "sliding_window_size": int(hf.get("sliding_window") or 0)}


def _fields(keys: dict) -> dict:
    # Mixtral's intermediate_size is the experts' width; our base_mlp_dim is unused there.
    return {**hfc.moe_fields(keys, _FIELDS), "sliding_window": keys["sliding_window_size"] or None}


# Mixtral always renormalises the top-k probabilities.
FAMILIES = (
    FamilySpec(
        "mixtral",
        stacks,
        traits=Traits(moe=True),
        hf=HFSpec(
            "mixtral", "MixtralForCausalLM", "hidden_act", "silu", False,
            dict(hfc.PLAIN, norm_topk_prob=True, **hfc.SOFTMAX), _keys, _fields,
            (LLAMA_NORMS, hf_mappings.HF_NORMS_LLAMA), hf_mappings.DENSE, hf_mappings.MOE,
            ("block_sparse_moe", ("w1", "w3", "w2")),
        ),
    ),
)  # fmt: skip
