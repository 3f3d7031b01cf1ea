"""The decoder layer with a mixture-of-experts feed-forward (MaxText.layers.moe) in place of the dense MLP,
and the stacks of MoE models: `first_num_dense_layers` dense layers ("dense_layers"), then MoE layers
("moe_layers"), or one stack "layers" when every layer is MoE."""

from MaxText.config.derived import ModelConfig
from MaxText.layers.moe import MoeBlock, RoutingConfig
from MaxText.models.spec import Stack
from MaxText.models.transformer_layer import DecoderLayer, kernel_plan, numerics


def routing_config(cfg: ModelConfig) -> RoutingConfig:
    return RoutingConfig(
        num_experts=cfg.num_experts,
        top_k=cfg.num_experts_per_tok,
        score_func=cfg.moe_score_func,
        norm_topk_prob=cfg.norm_topk_prob,
        n_group=cfg.moe_n_group,
        topk_group=cfg.moe_topk_group,
        group_score=cfg.moe_group_score,
        routed_scaling_factor=cfg.routed_scaling_factor,
    )


def moe_block(cfg: ModelConfig, name: str = "mlp") -> MoeBlock:
    return MoeBlock(
        routing=routing_config(cfg),
        expert_dim=cfg.moe_mlp_dim,
        activations=cfg.mlp_activations,
        num_shared_experts=cfg.num_shared_experts,
        score_correction_bias=cfg.moe_score_correction_bias,
        capacity_factor=cfg.capacity_factor,
        dot=kernel_plan(cfg).dot,
        name=name,
        **numerics(cfg),
    )


class MoeDecoderLayer(DecoderLayer):
    """DecoderLayer whose "mlp" routes each token to num_experts_per_tok of num_experts experts."""

    MOE = True

    def _feed_forward(self, h, segment_ids):
        return moe_block(self.config)(h, segment_ids != 0)


def moe_stacks(cfg: ModelConfig, dense_cls, moe_cls) -> list:
    """Dense-first layers (when first_num_dense_layers > 0) then the MoE layers."""
    dense = cfg.first_num_dense_layers
    if dense == 0:
        return [Stack("layers", moe_cls, cfg.num_decoder_layers)]
    return [
        Stack("dense_layers", dense_cls, dense),
        Stack("moe_layers", moe_cls, cfg.num_decoder_layers - dense),
    ]
