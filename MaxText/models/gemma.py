"""Gemma (1) block: pre-norm layers with `x_hat * (1 + w)` RMSNorms (normalization_scale_offset=1), a
gelu-tanh gated MLP, MQA/MHA with RoPE; the model ties embeddings and scales them by sqrt(D)
(scale_embeddings_by_sqrt_dim). Parameter names follow MaxText's Gemma: pre_self_attention_norm,
self_attention/..., pre_ffw_norm, mlp/{wi_0,wi_1,wo}."""

from MaxText.config.derived import ModelConfig
from MaxText.models import hf_configs as hfc
from MaxText.models import hf_mappings
from MaxText.models.spec import FamilySpec, HFSpec
from MaxText.models.transformer_layer import GEMMA_NORMS, DecoderLayer, single_layer_stacks


class GemmaDecoderLayer(DecoderLayer):
    """One Gemma layer: x + attn(norm(x)), then + mlp(norm(x))."""

    NORM_NAMES = GEMMA_NORMS


def stacks(cfg: ModelConfig) -> list:
    return single_layer_stacks(cfg, GemmaDecoderLayer)


FAMILIES = (
    FamilySpec(
        "gemma",
        stacks,
        hf=HFSpec(
            "gemma", "GemmaForCausalLM", "hidden_act", "gelu_pytorch_tanh", True, dict(hfc.GEMMA, use_qk_norm=False),
            hfc.no_window_keys, hfc.no_window_fields("gemma"), (GEMMA_NORMS, hf_mappings.HF_NORMS_LLAMA),
            hf_mappings.DENSE,
        ),
        add_bos_eos=(True, False),
    ),
)  # fmt: skip
