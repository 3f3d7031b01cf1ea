"""Values derived from the run config, each in a small named function.

`ModelConfig` is the slice of the run config that the model needs. Layers get it (or a few of its fields),
never the whole run config, so a model can be built without a training run around it.
"""

import dataclasses
import os

from MaxText.config.schema import REMAT_TENSORS, Config


@dataclasses.dataclass(frozen=True)
class ModelConfig:  # pylint: disable=too-many-instance-attributes
    """Everything that determines the model's parameters and numerics. Hashable, so it can be a Linen attr."""

    decoder_block: str
    emb_dim: int
    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    num_decoder_layers: int
    vocab_size: int
    mlp_activations: tuple
    normalization_layer_epsilon: float
    logits_via_embedding: bool
    rope_type: str
    rope_max_timescale: float
    rope_scaling_factor: float
    rope_low_freq_factor: float
    rope_high_freq_factor: float
    rope_original_max_position_embeddings: int
    sliding_window_size: int
    sliding_window_pattern: int
    local_rope_max_timescale: float
    normalization_type: str
    normalization_scale_offset: float
    scale_embeddings_by_sqrt_dim: bool
    trainable_position_size: int
    use_bias: bool
    use_qk_norm: bool
    use_post_attn_norm: bool
    use_post_ffw_norm: bool
    query_pre_attn_scalar: float
    attn_logits_soft_cap: float
    final_logits_soft_cap: float
    dropout_rate: float
    dtype: str
    weight_dtype: str
    matmul_precision: str
    logits_dot_in_fp32: bool
    attention: str
    flash_block_size: int
    scan_layers: bool
    param_scan_axis: int
    remat_policy: str
    remat_custom: tuple = ()  # remat_policy=custom: (tensor, remat|device|offload) pairs
    # Mixture of experts (defaults: a dense model).
    num_experts: int = 0
    num_experts_per_tok: int = 1
    moe_mlp_dim: int = 0
    moe_score_func: str = "softmax"
    norm_topk_prob: bool = False
    moe_n_group: int = 1
    moe_topk_group: int = 1
    moe_group_score: str = "max"
    moe_score_correction_bias: bool = False
    routed_scaling_factor: float = 1.0
    num_shared_experts: int = 0
    first_num_dense_layers: int = 0
    capacity_factor: float = 0.0
    # Multi-head latent attention (kv_lora_rank = 0: not used) and RoPE variants.
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    rope_interleave: bool = False
    rope_yarn_beta_fast: float = 32.0
    rope_yarn_beta_slow: float = 1.0
    rope_yarn_mscale: float = 0.0
    rope_yarn_mscale_all_dim: float = 0.0
    # Quantization (layers/quantizations.py); the KV-cache pair shapes the decode cache, not the params.
    quantization: str = ""
    checkpoint_is_quantized: bool = False
    quantize_kvcache: bool = False
    kv_quant_dtype: str = "int8"
    # Pipeline parallelism (the stage count comes from the mesh; parallel/pipeline.py).
    num_pipeline_microbatches: int = -1

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# Run-config keys that define a trained model (with its tokenizer). A checkpoint's saved values of these
# keys are applied when loading it for decode, so users need not repeat them; the command line still wins.
MODEL_KEYS = (
    "decoder_block", "base_emb_dim", "base_num_query_heads", "base_num_kv_heads", "base_mlp_dim",
    "base_num_decoder_layers", "head_dim", "vocab_size", "mlp_activations", "normalization_layer_epsilon",
    "logits_via_embedding", "rope_type", "rope_max_timescale", "rope_scaling_factor", "rope_low_freq_factor",
    "rope_high_freq_factor", "rope_original_max_position_embeddings", "sliding_window_size",
    "sliding_window_pattern", "local_rope_max_timescale", "normalization_type", "normalization_scale_offset",
    "scale_embeddings_by_sqrt_dim", "trainable_position_size", "use_bias", "use_qk_norm",
    "use_post_attn_norm", "use_post_ffw_norm", "query_pre_attn_scalar", "attn_logits_soft_cap",
    "final_logits_soft_cap", "dtype",
    "weight_dtype", "param_scan_axis", "tokenizer_path", "add_bos", "add_eos",
    "num_experts", "num_experts_per_tok", "base_moe_mlp_dim", "moe_score_func", "norm_topk_prob",
    "moe_n_group", "moe_topk_group", "moe_group_score", "moe_score_correction_bias", "routed_scaling_factor",
    "num_shared_experts", "first_num_dense_layers",
    "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "rope_interleave",
    "rope_yarn_beta_fast", "rope_yarn_beta_slow", "rope_yarn_mscale", "rope_yarn_mscale_all_dim",
    "quantization", "checkpoint_is_quantized",
)  # fmt: skip


def model_config(cfg: Config) -> ModelConfig:
    """The model slice of a run config. The `base_` prefixes are MaxText's key names for the same dims."""
    return ModelConfig(
        decoder_block=cfg.decoder_block,
        emb_dim=cfg.base_emb_dim,
        num_query_heads=cfg.base_num_query_heads,
        num_kv_heads=cfg.base_num_kv_heads,
        head_dim=cfg.head_dim,
        mlp_dim=cfg.base_mlp_dim,
        num_decoder_layers=cfg.base_num_decoder_layers,
        vocab_size=cfg.vocab_size,
        mlp_activations=tuple(cfg.mlp_activations),
        normalization_layer_epsilon=cfg.normalization_layer_epsilon,
        logits_via_embedding=cfg.logits_via_embedding,
        rope_type=cfg.rope_type,
        rope_max_timescale=cfg.rope_max_timescale,
        rope_scaling_factor=cfg.rope_scaling_factor,
        rope_low_freq_factor=cfg.rope_low_freq_factor,
        rope_high_freq_factor=cfg.rope_high_freq_factor,
        rope_original_max_position_embeddings=cfg.rope_original_max_position_embeddings,
        sliding_window_size=cfg.sliding_window_size,
        sliding_window_pattern=cfg.sliding_window_pattern,
        local_rope_max_timescale=cfg.local_rope_max_timescale,
        normalization_type=cfg.normalization_type,
        normalization_scale_offset=cfg.normalization_scale_offset,
        scale_embeddings_by_sqrt_dim=cfg.scale_embeddings_by_sqrt_dim,
        trainable_position_size=cfg.trainable_position_size,
        use_bias=cfg.use_bias,
        use_qk_norm=cfg.use_qk_norm,
        use_post_attn_norm=cfg.use_post_attn_norm,
        use_post_ffw_norm=cfg.use_post_ffw_norm,
        query_pre_attn_scalar=cfg.query_pre_attn_scalar,
        attn_logits_soft_cap=cfg.attn_logits_soft_cap,
        final_logits_soft_cap=cfg.final_logits_soft_cap,
        dropout_rate=cfg.dropout_rate,
        dtype=cfg.dtype,
        weight_dtype=cfg.weight_dtype,
        matmul_precision=cfg.matmul_precision,
        logits_dot_in_fp32=cfg.logits_dot_in_fp32,
        attention=cfg.attention,
        flash_block_size=cfg.flash_block_size,
        scan_layers=cfg.scan_layers,
        param_scan_axis=cfg.param_scan_axis,
        remat_policy=cfg.remat_policy,
        remat_custom=tuple((t, getattr(cfg, t)) for t in REMAT_TENSORS),
        num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.num_experts_per_tok,
        moe_mlp_dim=cfg.base_moe_mlp_dim,
        moe_score_func=cfg.moe_score_func,
        norm_topk_prob=cfg.norm_topk_prob,
        moe_n_group=cfg.moe_n_group,
        moe_topk_group=cfg.moe_topk_group,
        moe_group_score=cfg.moe_group_score,
        moe_score_correction_bias=cfg.moe_score_correction_bias,
        routed_scaling_factor=cfg.routed_scaling_factor,
        num_shared_experts=cfg.num_shared_experts,
        first_num_dense_layers=cfg.first_num_dense_layers,
        capacity_factor=cfg.capacity_factor,
        q_lora_rank=cfg.q_lora_rank,
        kv_lora_rank=cfg.kv_lora_rank,
        qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim,
        v_head_dim=cfg.v_head_dim,
        rope_interleave=cfg.rope_interleave,
        rope_yarn_beta_fast=cfg.rope_yarn_beta_fast,
        rope_yarn_beta_slow=cfg.rope_yarn_beta_slow,
        rope_yarn_mscale=cfg.rope_yarn_mscale,
        rope_yarn_mscale_all_dim=cfg.rope_yarn_mscale_all_dim,
        quantization=cfg.quantization,
        checkpoint_is_quantized=cfg.checkpoint_is_quantized,
        quantize_kvcache=cfg.quantize_kvcache,
        kv_quant_dtype=cfg.kv_quant_dtype,
        num_pipeline_microbatches=cfg.num_pipeline_microbatches,
    )


def run_dir(cfg: Config) -> str:
    """`<base_output_directory>/<run_name>`, absolute."""
    return os.path.abspath(os.path.join(cfg.base_output_directory, cfg.run_name))


def global_batch_size(cfg: Config, num_devices: int) -> int:
    """Rows per optimizer step: per_device_batch_size x devices (fractional per-device sizes allowed)."""
    return int(round(cfg.per_device_batch_size * num_devices))


def schedule_steps(cfg: Config) -> int:
    """Length of the warmup+cosine schedule; defaults to `steps`."""
    return cfg.steps if cfg.learning_rate_schedule_steps == -1 else cfg.learning_rate_schedule_steps
