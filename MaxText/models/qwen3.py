"""Qwen 3 dense block: the Llama layer with qk-norm (use_qk_norm: a plain RMSNorm over the head dim of each
query and key head, before RoPE). Parameter names follow MaxText's Qwen 3 (Llama's, plus
self_attention/query_norm/scale and self_attention/key_norm/scale [H])."""

from MaxText.config.derived import ModelConfig
from MaxText.models import hf_configs as hfc
from MaxText.models import hf_mappings
from MaxText.models.spec import FamilySpec, HFSpec
from MaxText.models.transformer_layer import LLAMA_NORMS, DecoderLayer, single_layer_stacks


class Qwen3DecoderLayer(DecoderLayer):
    """One Qwen 3 layer: x + attn(norm(x)) with normalised q/k heads, then + mlp(norm(x))."""

    NORM_NAMES = LLAMA_NORMS


def stacks(cfg: ModelConfig) -> list:
    return single_layer_stacks(cfg, Qwen3DecoderLayer)


# Qwen 3's tokenizers add neither BOS nor EOS when encoding.
FAMILIES = (
    FamilySpec(
        "qwen3",
        stacks,
        hf=HFSpec(
            "qwen3", "Qwen3ForCausalLM", "hidden_act", "silu", False, dict(hfc.PLAIN, use_qk_norm=True),
            hfc.no_window_keys, hfc.no_window_fields("qwen3", {"use_sliding_window": False}),
            (LLAMA_NORMS, hf_mappings.HF_NORMS_LLAMA), hf_mappings.DENSE,
        ),
        add_bos_eos=(False, False),
    ),
)  # fmt: skip
