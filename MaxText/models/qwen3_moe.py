"""Qwen 3 MoE block: the Qwen 3 layer (qk-norm) with a sparse MoE in place of the MLP: softmax router, top-k,
renormalised when norm_topk_prob (true for the released models). Every layer is MoE.

Parameters per layer: Qwen 3's attention (with query_norm/key_norm) and norms, mlp/gate/kernel [D, E],
mlp/{wi_0,wi_1} [E, D, F], mlp/wo [E, F, D].
"""

from MaxText.config.derived import ModelConfig
from MaxText.models.moe_layer import MoeDecoderLayer, moe_stacks
from MaxText.models import hf_configs as hfc
from MaxText.models import hf_mappings
from MaxText.models.qwen3 import Qwen3DecoderLayer
from MaxText.models.spec import FamilySpec, HFSpec, Traits


class Qwen3MoeDecoderLayer(MoeDecoderLayer):
    NORM_NAMES = Qwen3DecoderLayer.NORM_NAMES


def stacks(cfg: ModelConfig) -> list:
    return moe_stacks(cfg, Qwen3DecoderLayer, Qwen3MoeDecoderLayer)


_FIELDS = {"num_experts": "num_local_experts", "base_moe_mlp_dim": "moe_intermediate_size"}


def _keys(hf: dict, where: str) -> dict:
    hfc.require(
        not hf.get("mlp_only_layers") and hf.get("decoder_sparse_step", 1) == 1,
        f"{where}: qwen3_moe with dense layers (mlp_only_layers, decoder_sparse_step) is not supported",
    )
    return {**hfc.moe_keys(hf, where, _FIELDS), "norm_topk_prob": bool(hf.get("norm_topk_prob", False))}


def _fields(keys: dict) -> dict:
    window = keys["sliding_window_size"]
    hfc.require(not window, f"sliding_window_size={window}: Hugging Face qwen3_moe has no sliding window")
    return {**hfc.moe_fields(keys, _FIELDS), "norm_topk_prob": bool(keys["norm_topk_prob"]),
            "use_sliding_window": False, "decoder_sparse_step": 1, "mlp_only_layers": []}  # fmt: skip


FAMILIES = (
    FamilySpec(
        "qwen3_moe",
        stacks,
        traits=Traits(moe=True),
        hf=HFSpec(
            "qwen3_moe", "Qwen3MoeForCausalLM", "hidden_act", "silu", False,
            dict(hfc.PLAIN, use_qk_norm=True, **hfc.SOFTMAX), _keys, _fields,
            (Qwen3DecoderLayer.NORM_NAMES, hf_mappings.HF_NORMS_LLAMA), hf_mappings.DENSE, hf_mappings.MOE,
            ("mlp", ("gate_proj", "up_proj", "down_proj")),
        ),
    ),
)  # fmt: skip
