"""The typed run configuration.

`configs/base.yml` holds every key with its default and a one-line comment; this class holds every key with
its type and constraints. `load_config` refuses a base.yml that disagrees with this class, so the two lists
cannot drift apart. Values come from base.yml, then the model YAML, then the command line.
"""

import dataclasses
from typing import Any


def _f(**constraints) -> Any:
    """A schema field. Constraints: choices=[...], ge=, gt=, le= (checked by validate.check_field)."""
    return dataclasses.field(metadata=constraints)  # pylint: disable=invalid-field-call


DTYPES = ["float32", "bfloat16", "float16"]
ACTIVATIONS = ["silu", "gelu", "gelu_tanh", "relu", "linear"]
# Device mesh axes as MaxText names them (parallel/mesh.py builds the mesh; cfg.mesh_axes orders them).
MESH_AXES = (
    "data",
    "stage",
    "fsdp",
    "fsdp_transpose",
    "sequence",
    "context",
    "tensor",
    "tensor_sequence",
    "expert",
    "autoregressive",
)
REMAT_POLICIES = [
    "none",
    "minimal",
    "save_dot_except_mlp",
    "save_qkv_proj",
    "save_out_proj",
    "full",
    "save_dot_except_mlpwi",
    "save_dot_with_context_except_mlp",
    "qkv_proj_offloaded",
    "minimal_offloaded",
    "custom",
]
# The named activations remat_policy=custom places one by one (layers/remat.py), each a config key.
REMAT_TENSORS = ("query_proj", "key_proj", "value_proj", "context", "out_proj", "mlpwi", "mlpwo")
REMAT_CHOICES = ["remat", "device", "offload"]


@dataclasses.dataclass(frozen=True)
class Config:  # pylint: disable=too-many-instance-attributes
    """Every configuration key, typed. Field order follows base.yml."""

    # Run.
    run_name: str = _f()
    model_name: str = _f()
    base_output_directory: str = _f()

    # Model shape.
    decoder_block: str = _f()
    base_emb_dim: int = _f(gt=0)
    base_num_query_heads: int = _f(gt=0)
    base_num_kv_heads: int = _f(gt=0)
    base_mlp_dim: int = _f(gt=0)
    base_num_decoder_layers: int = _f(gt=0)
    head_dim: int = _f(gt=0)
    vocab_size: int = _f(gt=0)
    mlp_activations: list = _f()
    normalization_layer_epsilon: float = _f(gt=0)
    logits_via_embedding: bool = _f()
    rope_type: str = _f(choices=["default", "llama3", "linear", "yarn"])
    rope_max_timescale: float = _f(gt=0)
    rope_scaling_factor: float = _f(gt=0)
    rope_low_freq_factor: float = _f(gt=0)
    rope_high_freq_factor: float = _f(gt=0)
    rope_original_max_position_embeddings: int = _f(gt=0)
    sliding_window_size: int = _f(ge=0)
    sliding_window_pattern: int = _f(ge=0)
    local_rope_max_timescale: float = _f(ge=0)
    normalization_type: str = _f(choices=["rmsnorm", "layernorm"])
    normalization_scale_offset: float = _f()
    scale_embeddings_by_sqrt_dim: bool = _f()
    trainable_position_size: int = _f(ge=0)
    use_bias: bool = _f()
    use_qk_norm: bool = _f()
    use_post_attn_norm: bool = _f()
    use_post_ffw_norm: bool = _f()
    query_pre_attn_scalar: float = _f(ge=0)
    attn_logits_soft_cap: float = _f(ge=0)
    final_logits_soft_cap: float = _f(ge=0)
    dropout_rate: float = _f(ge=0, le=1)

    # Numerics and kernels.
    dtype: str = _f(choices=DTYPES)
    weight_dtype: str = _f(choices=DTYPES)
    matmul_precision: str = _f(choices=["default", "high", "highest"])
    logits_dot_in_fp32: bool = _f()
    attention: str = _f(choices=["dot_product", "flash", "splash", "paged", "autoselected"])
    flash_block_size: int = _f(gt=0)
    scan_layers: bool = _f()
    param_scan_axis: int = _f(choices=[0, 1])
    remat_policy: str = _f(choices=REMAT_POLICIES)
    init_weights_seed: int = _f(ge=0)

    # Training.
    steps: int = _f(ge=0)
    per_device_batch_size: float = _f(gt=0)
    max_target_length: int = _f(gt=1)
    learning_rate: float = _f(ge=0)
    warmup_steps_fraction: float = _f(ge=0, le=1)
    cosine_learning_rate_final_fraction: float = _f(ge=0, le=1)
    learning_rate_schedule_steps: int = _f(ge=-1)
    adam_b1: float = _f(ge=0, le=1)
    adam_b2: float = _f(ge=0, le=1)
    adam_eps: float = _f(ge=0)
    adam_eps_root: float = _f(ge=0)
    adam_weight_decay: float = _f(ge=0)
    gradient_clipping_threshold: float = _f(ge=0)
    gradient_accumulation_steps: int = _f(gt=0)
    z_loss_multiplier: float = _f(ge=0)
    log_period: int = _f(gt=0)
    eval_interval: int = _f(ge=0)
    eval_steps: int = _f(gt=0)
    peak_tflops_per_device: float = _f(ge=0)

    # Data.
    dataset_type: str = _f(choices=["builtin", "synthetic", "grain", "hf", "tfds"])
    tokenizer_path: str = _f()
    data_shuffle_seed: int = _f(ge=0)
    eval_split_fraction: float = _f(gt=0, le=0.5)
    add_bos: bool = _f()
    add_eos: bool = _f()
    packing: bool = _f()

    # Checkpointing.
    enable_checkpointing: bool = _f()
    checkpoint_period: int = _f(gt=0)
    async_checkpointing: bool = _f()
    max_num_checkpoints_to_keep: int = _f(ge=0)
    load_parameters_path: str = _f()

    # Profiling.
    profiler: str = _f(choices=["", "xplane"])
    skip_first_n_steps_for_profiler: int = _f(ge=0)
    profiler_steps: int = _f(gt=0)

    # Decoding.
    prompt: str = _f()
    max_prefill_predict_length: int = _f(gt=0)
    max_decode_steps: int = _f(ge=0)
    decode_sampling_strategy: str = _f(choices=["greedy", "weighted", "topk", "nucleus"])
    decode_sampling_temperature: float = _f(gt=0)
    decode_sampling_top_k: int = _f(ge=0)
    decode_sampling_nucleus_p: float = _f(gt=0, le=1)
    decode_sampling_seed: int = _f(ge=0)

    # Parallelism.
    mesh_axes: list = _f()
    ici_data_parallelism: int = _f(ge=-1)
    ici_fsdp_parallelism: int = _f(ge=-1)
    ici_tensor_parallelism: int = _f(ge=-1)
    logical_axis_rules: list = _f()

    # ---- Data sources ----
    grain_train_files: str = _f()
    grain_eval_files: str = _f()
    grain_worker_count: int = _f(ge=0)
    packing_type: str = _f(choices=["first_fit", "concat"])
    train_data_columns: str = _f()
    tokenize_train_data: bool = _f()
    hf_path: str = _f()
    hf_data_files: str = _f()
    hf_eval_files: str = _f()
    hf_streaming: bool = _f()
    dataset_name: str = _f()
    dataset_path: str = _f()
    train_split: str = _f()
    eval_split: str = _f()
    target_eval_loss: float = _f(ge=0)

    # ---- Scale-out ----
    jax_distributed_initialization_timeout: int = _f(gt=0)
    ici_pipeline_parallelism: int = _f(ge=-1)
    ici_fsdp_transpose_parallelism: int = _f(ge=-1)
    ici_sequence_parallelism: int = _f(ge=-1)
    ici_context_parallelism: int = _f(ge=-1)
    ici_tensor_sequence_parallelism: int = _f(ge=-1)
    ici_expert_parallelism: int = _f(ge=-1)
    ici_autoregressive_parallelism: int = _f(ge=-1)
    dcn_data_parallelism: int = _f(ge=-1)
    dcn_pipeline_parallelism: int = _f(ge=-1)
    dcn_fsdp_parallelism: int = _f(ge=-1)
    dcn_fsdp_transpose_parallelism: int = _f(ge=-1)
    dcn_sequence_parallelism: int = _f(ge=-1)
    dcn_context_parallelism: int = _f(ge=-1)
    dcn_tensor_parallelism: int = _f(ge=-1)
    dcn_tensor_sequence_parallelism: int = _f(ge=-1)
    dcn_expert_parallelism: int = _f(ge=-1)
    dcn_autoregressive_parallelism: int = _f(ge=-1)
    sharding_tolerance: float = _f(ge=0)

    # ---- Mixture of experts ----
    num_experts: int = _f(ge=0)
    num_experts_per_tok: int = _f(gt=0)
    base_moe_mlp_dim: int = _f(ge=0)
    moe_score_func: str = _f(choices=["softmax", "sigmoid"])
    norm_topk_prob: bool = _f()
    moe_n_group: int = _f(gt=0)
    moe_topk_group: int = _f(gt=0)
    moe_group_score: str = _f(choices=["max", "top2_sum"])
    moe_score_correction_bias: bool = _f()
    routed_scaling_factor: float = _f(gt=0)
    num_shared_experts: int = _f(ge=0)
    first_num_dense_layers: int = _f(ge=0)
    capacity_factor: float = _f()
    load_balance_loss_weight: float = _f(ge=0)

    # ---- Latent attention (MLA) ----
    q_lora_rank: int = _f(ge=0)
    kv_lora_rank: int = _f(ge=0)
    qk_nope_head_dim: int = _f(gt=0)
    qk_rope_head_dim: int = _f(gt=0)
    v_head_dim: int = _f(gt=0)
    rope_interleave: bool = _f()
    rope_yarn_beta_fast: float = _f(gt=0)
    rope_yarn_beta_slow: float = _f(gt=0)
    rope_yarn_mscale: float = _f(ge=0)
    rope_yarn_mscale_all_dim: float = _f(ge=0)

    # Serving.
    decode_batch_size: int = _f(gt=0)
    kv_cache: str = _f(choices=["contiguous", "paged"])
    kv_page_size: int = _f(gt=0)
    kv_num_pages: int = _f(ge=0)
    serve_host: str = _f()
    port: int = _f(ge=0, le=65535)
    api_key: str = _f()
    max_queue_size: int = _f(gt=0)
    chat_template: str = _f()

    # ---- Quantization ----
    quantization: str = _f(choices=["", "int8", "int8w", "fp8"])
    checkpoint_is_quantized: bool = _f()
    save_quantized_params_path: str = _f()
    quantize_kvcache: bool = _f()
    kv_quant_dtype: str = _f(choices=["int8"])

    # ---- AOT compile and memory ----
    compile_topology: str = _f()
    compile_topology_num_slices: int = _f(gt=0)
    compiled_trainstep_file: str = _f()
    query_proj: str = _f(choices=REMAT_CHOICES)
    key_proj: str = _f(choices=REMAT_CHOICES)
    value_proj: str = _f(choices=REMAT_CHOICES)
    context: str = _f(choices=REMAT_CHOICES)
    out_proj: str = _f(choices=REMAT_CHOICES)
    mlpwi: str = _f(choices=REMAT_CHOICES)
    mlpwo: str = _f(choices=REMAT_CHOICES)

    # ---- Pipeline and expert parallelism ----
    num_pipeline_microbatches: int = _f(ge=-1)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
