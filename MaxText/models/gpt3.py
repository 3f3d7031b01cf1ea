"""GPT-3 block: pre-norm LayerNorms with biases (normalization_type=layernorm), multi-head attention without
RoPE (the model adds learned absolute positions, trainable_position_size), biases in every projection
(use_bias) and a plain gelu MLP (mlp_activations=[gelu], parameter mlp/wi). No Hugging Face checkpoint.

Parameters per layer: pre_self_attention_norm/{scale,bias}, self_attention/{query,key,value,out}/{kernel,bias},
pre_ffw_norm/{scale,bias}, mlp/{wi,wo}/{kernel,bias}; decoder/position_embedder/embedding [P, D].
"""

from MaxText.config.derived import ModelConfig
from MaxText.models.spec import FamilySpec
from MaxText.models.transformer_layer import GEMMA_NORMS, DecoderLayer, single_layer_stacks


class Gpt3DecoderLayer(DecoderLayer):
    """One GPT-3 layer: x + attn(ln(x)), then + mlp(ln(x)); positions enter through the embeddings."""

    NORM_NAMES = GEMMA_NORMS
    USE_ROPE = False


def stacks(cfg: ModelConfig) -> list:
    return single_layer_stacks(cfg, Gpt3DecoderLayer)


# No released checkpoint or tokenizer: no Hugging Face mapping; encoding adds neither BOS nor EOS.
FAMILIES = (FamilySpec("gpt3", stacks, add_bos_eos=(False, False)),)
