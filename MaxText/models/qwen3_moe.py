"""Qwen 3 MoE block: the Qwen 3 layer (qk-norm) with a sparse MoE in place of the MLP: softmax router, top-k,
renormalised when norm_topk_prob (true for the released models). Every layer of the released models is MoE
(one stack "layers"). A config whose dense-MLP layers (of intermediate_size: those in mlp_only_layers or
off the decoder_sparse_step grid) are the first k forms DeepSeek's two stacks, "dense_layers" (k Qwen 3
layers) then "moe_layers" (first_num_dense_layers = k); any other placement is refused.

Parameters per layer: Qwen 3's attention (with query_norm/key_norm) and norms, mlp/gate/kernel [D, E],
mlp/{wi_0,wi_1} [E, D, F], mlp/wo [E, F, D]; a dense layer's mlp/{wi_0,wi_1,wo}/kernel.
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


def _dense_first(hf: dict, where: str) -> int:
    """k when the layers transformers gives a dense MLP (in mlp_only_layers, or i + 1 not a multiple of
    decoder_sparse_step) are exactly 0 .. k-1 and some layer is left MoE."""
    n, step = hf["num_hidden_layers"], hf.get("decoder_sparse_step", 1)
    hfc.require(isinstance(step, int) and step >= 1, f"{where}: decoder_sparse_step={step!r}: expected >= 1")
    only = set(hf.get("mlp_only_layers") or ())
    dense = [i for i in range(n) if i in only or (i + 1) % step != 0]
    hfc.require(
        dense == list(range(len(dense))) and len(dense) < n,
        f"{where}: qwen3_moe dense-MLP layers {dense} (mlp_only_layers, decoder_sparse_step={step}) are "
        f"supported only as the first k < num_hidden_layers={n} layers",
    )
    return len(dense)


def _keys(hf: dict, where: str) -> dict:
    return {
        **hfc.moe_keys(hf, where, _FIELDS),
        "norm_topk_prob": bool(hf.get("norm_topk_prob", False)),
        "first_num_dense_layers": _dense_first(hf, where),
    }


def _fields(keys: dict) -> dict:
    window = keys["sliding_window_size"]
    hfc.require(not window, f"sliding_window_size={window}: Hugging Face qwen3_moe has no sliding window")
    return {**hfc.moe_fields(keys, _FIELDS), "norm_topk_prob": bool(keys["norm_topk_prob"]),
            "use_sliding_window": False, "decoder_sparse_step": 1,
            "mlp_only_layers": list(range(keys["first_num_dense_layers"]))}  # fmt: skip


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
