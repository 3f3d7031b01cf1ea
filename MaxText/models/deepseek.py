"""DeepSeek V2 / V3 blocks (decoder_block deepseek2, deepseek3): multi-head latent attention
(MaxText.layers.mla) in every layer; `first_num_dense_layers` dense-MLP layers ("dense_layers"), then MoE
layers with shared experts ("moe_layers"). V2 and V3 differ only in config: V3 routes with sigmoid scores,
a score-correction bias, top-2-sum group scores and normalised top-k weights.

Parameters per layer: pre_self_attention_layer_norm, self_attention/{wq_a, q_norm, wq_b | query, wkv_a,
kv_norm, wkv_b, out}, post_self_attention_layer_norm, and mlp/{wi_0, wi_1, wo} (dense layers) or
mlp/{gate, [score_correction_bias], wi_0, wi_1, wo, shared_experts} (MoE layers).
"""

from MaxText.config.derived import ModelConfig
from MaxText.layers.embeddings import yarn_mscale
from MaxText.layers.mla import MLA
from MaxText.models.moe_layer import MoeDecoderLayer, moe_stacks
from MaxText.models.transformer_layer import LLAMA_NORMS, DecoderLayer, numerics, rope_config


def mla_scale(cfg: ModelConfig) -> float:
    """(P + O)^-0.5, times yarn_mscale(factor, mscale_all_dim)^2 under YaRN with mscale_all_dim set."""
    scale = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
    if cfg.rope_type == "yarn" and cfg.rope_yarn_mscale_all_dim:
        scale *= yarn_mscale(cfg.rope_scaling_factor, cfg.rope_yarn_mscale_all_dim) ** 2
    return scale


class _LatentAttention:
    """Mixin: the layer's attention is MLA and its decode cache the compressed latent."""

    def _attention(self):
        # The DecoderLayer this is mixed into has `config`.
        cfg = self.config  # pylint: disable=no-member
        return MLA(
            num_heads=cfg.num_query_heads,
            q_lora_rank=cfg.q_lora_rank,
            kv_lora_rank=cfg.kv_lora_rank,
            qk_nope_head_dim=cfg.qk_nope_head_dim,
            qk_rope_head_dim=cfg.qk_rope_head_dim,
            v_head_dim=cfg.v_head_dim,
            rope=rope_config(cfg, head_dim=cfg.qk_rope_head_dim),
            scale=mla_scale(cfg),
            kernel=cfg.attention,
            block_size=cfg.flash_block_size,
            norm_epsilon=cfg.normalization_layer_epsilon,
            name="self_attention",
            **numerics(cfg),
        )

    @classmethod
    def cache_shapes(cls, cfg: ModelConfig) -> dict:
        return {"latent": (cfg.kv_lora_rank,), "k_rope": (cfg.qk_rope_head_dim,)}


class DeepSeekDenseLayer(_LatentAttention, DecoderLayer):
    """MLA, then a dense gated MLP of mlp_dim."""

    NORM_NAMES = LLAMA_NORMS
    USES_MLA = True


class DeepSeekMoeLayer(_LatentAttention, MoeDecoderLayer):
    """MLA, then routed experts plus shared experts."""

    NORM_NAMES = LLAMA_NORMS
    USES_MLA = True


def stacks(cfg: ModelConfig) -> list:
    return moe_stacks(cfg, DeepSeekDenseLayer, DeepSeekMoeLayer)
