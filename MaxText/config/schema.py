"""Every setting, declared once: its type, default, allowed values, one-line help and section.

`Config` is the run configuration: one field per key, and each field is that key's declaration. The model's
config (`derived.ModelConfig`, with the fields tagged `model`), the model keys saved with a checkpoint (those
tagged `saved`) and the per-key validation all come from these declarations. `configs/base.yml` is the
user-facing list of every key with its comment; tests/config checks that it and these declarations agree key
by key (section, default and help). Allowed values are Enums (config/choices.py) that the implementations
key their tables by. Values come from base.yml, then the model YAML, then the command line.
"""

import copy
import dataclasses
import enum
from typing import Any, Optional

from MaxText.config.choices import (
    AttentionKernel,
    DatasetType,
    DType,
    GroupScore,
    KVCacheKind,
    KVQuantDType,
    LrScheduleType,
    MeshAxis,
    NormType,
    OptType,
    PackingType,
    Precision,
    Profiler,
    Quantization,
    RematPlacement,
    RematPolicy,
    RopeType,
    SamplingStrategy,
    ScoreFunc,
    SftOverlong,
    WsdDecayStyle,
)


class Section(enum.StrEnum):
    """The groups of base.yml, in its order (its `# ---- <title> ----` headers)."""

    RUN = "Run"
    MODEL_SHAPE = "Model shape"
    NUMERICS_KERNELS = "Numerics and kernels"
    TRAINING = "Training"
    DATA = "Data"
    CHECKPOINTING = "Checkpointing"
    PROFILING = "Profiling"
    DECODING = "Decoding"
    PARALLELISM = "Parallelism"
    DATA_SOURCES = "Data sources"
    SCALE_OUT = "Scale-out"
    MIXTURE_OF_EXPERTS = "Mixture of experts"
    LATENT_ATTENTION_MLA = "Latent attention (MLA)"
    SERVING = "Serving"
    QUANTIZATION = "Quantization"
    AOT_COMPILE_MEMORY = "AOT compile and memory"
    PIPELINE_EXPERT_PARALLELISM = "Pipeline and expert parallelism"
    POST_TRAINING = "Post-training"


@dataclasses.dataclass(frozen=True)
class Setting:
    """One key's declaration. `model`: the ModelConfig field it becomes (None: the model does not read it);
    `saved`: recorded with checkpoints as a model key (applied when the checkpoint is loaded)."""

    name: str
    type: type
    default: Any
    help: str
    section: Section
    choices: Optional[type] = None  # an Enum of the allowed values
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    model: Optional[str] = None
    saved: bool = False


def _section(section: Section):
    """The field declarer of one section: declare(default, help, choices=, ge=, gt=, le=, model=, saved=)."""

    def declare(default, help_text: str, *, model=None, **rules):  # pylint: disable=redefined-builtin
        meta = dict(rules, help=help_text, section=section, model=model)
        if isinstance(default, list):
            return dataclasses.field(  # pylint: disable=invalid-field-call
                default_factory=lambda: copy.deepcopy(default), metadata=meta
            )
        return dataclasses.field(default=default, metadata=meta)  # pylint: disable=invalid-field-call

    return declare


_run = _section(Section.RUN)
_model_shape = _section(Section.MODEL_SHAPE)
_numerics_kernels = _section(Section.NUMERICS_KERNELS)
_training = _section(Section.TRAINING)
_data = _section(Section.DATA)
_checkpointing = _section(Section.CHECKPOINTING)
_profiling = _section(Section.PROFILING)
_decoding = _section(Section.DECODING)
_parallelism = _section(Section.PARALLELISM)
_data_sources = _section(Section.DATA_SOURCES)
_scale_out = _section(Section.SCALE_OUT)
_mixture_of_experts = _section(Section.MIXTURE_OF_EXPERTS)
_latent_attention_mla = _section(Section.LATENT_ATTENTION_MLA)
_serving = _section(Section.SERVING)
_quantization = _section(Section.QUANTIZATION)
_aot_compile_memory = _section(Section.AOT_COMPILE_MEMORY)
_pipeline_expert_parallelism = _section(Section.PIPELINE_EXPERT_PARALLELISM)
_post_training = _section(Section.POST_TRAINING)


@dataclasses.dataclass(frozen=True)
class Config:  # pylint: disable=too-many-instance-attributes
    """Every configuration key, typed. Field order follows base.yml."""

    # fmt: off
    # Run.
    run_name: str = _run('', 'Run directory name under base_output_directory; an existing run resumes. "" = timestamp.')
    model_name: str = _run('default', 'Merges configs/models/<model_name>.yml; "default" uses the keys below.')
    base_output_directory: str = _run("./runs", "Root for run directories (checkpoints, config.yml, metrics.jsonl, tensorboard/).")

    # Model shape.
    decoder_block: str = _model_shape("llama2", "Model family: a FamilySpec registered by a module of MaxText/models/ (llama2, mistral, ...).", model=True, saved=True)
    base_emb_dim: int = _model_shape(256, "Model (embedding) dimension D.", gt=0, model="emb_dim", saved=True)
    base_num_query_heads: int = _model_shape(4, "Query heads N.", gt=0, model="num_query_heads", saved=True)
    base_num_kv_heads: int = _model_shape(4, "Key/value heads K (GQA when K < N, MQA when K = 1).", gt=0, model="num_kv_heads", saved=True)
    base_mlp_dim: int = _model_shape(1024, "Hidden size F of the MLP.", gt=0, model="mlp_dim", saved=True)
    base_num_decoder_layers: int = _model_shape(4, "Decoder layers L.", gt=0, model="num_decoder_layers", saved=True)
    head_dim: int = _model_shape(64, "Per-head dimension H.", gt=0, model=True, saved=True)
    vocab_size: int = _model_shape(4096, "Vocabulary size V (must cover the tokenizer's vocabulary).", gt=0, model=True, saved=True)
    mlp_activations: list = _model_shape(["silu", "linear"], "One entry per MLP input projection; two entries = gated (SwiGLU).", model=True, saved=True)
    normalization_layer_epsilon: float = _model_shape(1e-05, "RMSNorm epsilon.", gt=0, model=True, saved=True)
    logits_via_embedding: bool = _model_shape(True, "Tie the output projection to the token embedding.", model=True, saved=True)
    rope_type: str = _model_shape('default', '"default", "llama3" (llama 3.1 frequency scaling) or "linear" (frequencies / rope_scaling_factor).', choices=RopeType, model=True, saved=True)
    rope_max_timescale: float = _model_shape(10000.0, "RoPE base (theta).", gt=0, model=True, saved=True)
    rope_scaling_factor: float = _model_shape(8.0, "llama3 and linear rope: factor.", gt=0, model=True, saved=True)
    rope_low_freq_factor: float = _model_shape(1.0, "llama3 rope: low_freq_factor.", gt=0, model=True, saved=True)
    rope_high_freq_factor: float = _model_shape(4.0, "llama3 rope: high_freq_factor.", gt=0, model=True, saved=True)
    rope_original_max_position_embeddings: int = _model_shape(8192, "llama3 rope: original_max_position_embeddings.", gt=0, model=True, saved=True)
    sliding_window_size: int = _model_shape(0, "Sliding-window attention width W (query i sees key j when i - W < j <= i); 0 = off.", ge=0, model=True, saved=True)
    sliding_window_pattern: int = _model_shape(0, "Every Nth layer attends globally, the others use the window (Gemma 2: 2, Gemma 3: 6); 0 = all use it.", ge=0, model=True, saved=True)
    local_rope_max_timescale: float = _model_shape(0.0, "RoPE base of sliding-window layers, which then skip rope scaling (Gemma 3: 1e4); 0 = the global RoPE.", ge=0, model=True, saved=True)
    normalization_type: str = _model_shape("rmsnorm", "rmsnorm, or layernorm (mean-centred, with a bias; GPT-3).", choices=NormType, model=True, saved=True)
    normalization_scale_offset: float = _model_shape(0.0, "Norms multiply by (offset + scale); Gemma's 1 + w norms use 1.0, weights stay as published.", model=True, saved=True)
    scale_embeddings_by_sqrt_dim: bool = _model_shape(False, "Multiply token embeddings by sqrt(D), rounded to the activation dtype (Gemma).", model=True, saved=True)
    trainable_position_size: int = _model_shape(0, "Rows of a learned absolute position table added to the token embeddings (GPT-3); 0 = none.", ge=0, model=True, saved=True)
    use_bias: bool = _model_shape(False, "Biases in the attention and MLP projections (GPT-3).", model=True, saved=True)
    use_qk_norm: bool = _model_shape(False, "RMSNorm over the head dim of queries and keys before RoPE (Qwen 3, Gemma 3).", model=True, saved=True)
    qk_norm_across_heads: bool = _model_shape(False, "use_qk_norm: one RMSNorm over all heads of q (N*H) and one over all of k (K*H), scales of those sizes (OLMo 3).", model=True, saved=True)
    use_pre_norms: bool = _model_shape(True, "Norm the inputs of attention and the MLP; false leaves only the post norms, x + norm(f(x)) (OLMo 3).", model=True, saved=True)
    use_post_attn_norm: bool = _model_shape(False, "Norm the attention output before its residual add (Gemma 2 and 3).", model=True, saved=True)
    use_post_ffw_norm: bool = _model_shape(False, "Norm the MLP output before its residual add (Gemma 2 and 3).", model=True, saved=True)
    query_pre_attn_scalar: float = _model_shape(0.0, "Attention scores are scaled by query_pre_attn_scalar**-0.5 (Gemma 2 and 3); 0 = head_dim.", ge=0, model=True, saved=True)
    attn_logits_soft_cap: float = _model_shape(0.0, "Attention scores -> cap * tanh(scores / cap) before masking (Gemma 2: 50); 0 = off.", ge=0, model=True, saved=True)
    final_logits_soft_cap: float = _model_shape(0.0, "Output logits -> cap * tanh(logits / cap) (Gemma 2: 30); 0 = off.", ge=0, model=True, saved=True)
    dropout_rate: float = _model_shape(0.0, "Dropout on residual branches during training.", ge=0, le=1, model=True)

    # Numerics and kernels.
    dtype: str = _numerics_kernels("float32", "Activation / compute dtype (float32, bfloat16, float16).", choices=DType, model=True, saved=True)
    weight_dtype: str = _numerics_kernels("float32", "Parameter storage dtype.", choices=DType, model=True, saved=True)
    matmul_precision: str = _numerics_kernels("default", "jax.lax.Precision for matmuls: default, high or highest.", choices=Precision, model=True)
    logits_dot_in_fp32: bool = _numerics_kernels(True, "Compute the output logits matmul in float32.", model=True)
    attention: str = _numerics_kernels("dot_product", "Attention kernel: dot_product (reference), flash (Pallas on GPU, blockwise JAX elsewhere), splash (TPU), paged (Pallas paged decode; needs kv_cache=paged) or autoselected (by platform and phase; docs/serving.md).", choices=AttentionKernel, model=True)
    flash_block_size: int = _numerics_kernels(128, "Query/key block size of flash and splash (splash: a multiple of 128; Pallas flash: a power of two >= 16).", gt=0, model=True)
    scan_layers: bool = _numerics_kernels(True, "Stack layers under nn.scan (fast compiles); false gives layers_0..layers_{L-1}.", model=True)
    param_scan_axis: int = _numerics_kernels(1, "Position of the stacked layer axis in scanned parameters (MaxText: 1).", ge=0, le=1, model=True, saved=True)
    remat_policy: str = _numerics_kernels("none", "Rematerialisation (layers/remat.py): none, full, minimal, save_dot_except_mlp(wi), save_qkv_proj, save_out_proj, save_dot_with_context_except_mlp, qkv_proj_offloaded, minimal_offloaded, custom.", choices=RematPolicy, model=True)
    init_weights_seed: int = _numerics_kernels(0, "Seed for parameter initialisation.", ge=0)

    # Training.
    steps: int = _training(300, "Optimizer steps to train for.", ge=0)
    per_device_batch_size: float = _training(8.0, "Rows per device per optimizer step (fractions allowed when the product is whole).", gt=0)
    max_target_length: int = _training(256, "Sequence length T.", gt=1)
    learning_rate: float = _training(0.003, "Peak learning rate.", ge=0)
    lr_schedule_type: str = _training("cosine", "Decay after the linear warm-up: cosine, wsd (warmup-stable-decay), linear, constant or inverse_sqrt (docs/optimizers.md).", choices=LrScheduleType)
    warmup_steps_fraction: float = _training(0.05, "Fraction of the schedule spent in linear warmup.", ge=0, le=1)
    learning_rate_final_fraction: float = _training(0.1, "Final learning rate as a fraction of the peak, for every decaying schedule (inverse_sqrt: its floor).", ge=0, le=1)
    cosine_learning_rate_final_fraction: float = _training(-1.0, "Older name of learning_rate_final_fraction; -1 = not set.", ge=-1, le=1)
    learning_rate_schedule_steps: int = _training(-1, "Length of the schedule; -1 = steps.", ge=-1)
    wsd_decay_steps_fraction: float = _training(0.1, "wsd: fraction of the schedule spent decaying, at its end.", ge=0, le=1)
    wsd_decay_style: str = _training("linear", "wsd: shape of the decay: linear, cosine or 1-sqrt.", choices=WsdDecayStyle)
    opt_type: str = _training("adamw", "Optimizer: adamw, adam_pax, muon, lion, adafactor or sgd (docs/optimizers.md).", choices=OptType)
    adam_b1: float = _training(0.9, "AdamW beta1.", ge=0, le=1)
    adam_b2: float = _training(0.95, "AdamW beta2.", ge=0, le=1)
    adam_eps: float = _training(1e-08, "AdamW epsilon.", ge=0)
    adam_eps_root: float = _training(0.0, "AdamW epsilon inside the square root.", ge=0)
    adam_weight_decay: float = _training(0.1, "Decoupled weight decay of adamw and adam_pax (and of muon's AdamW part); never on norms or biases.", ge=0)
    muon_beta: float = _training(0.95, "muon: momentum decay.", ge=0, le=1)
    muon_nesterov: bool = _training(True, "muon: Nesterov momentum.")
    muon_ns_steps: int = _training(5, "muon: Newton-Schulz iterations.", gt=0)
    muon_weight_decay: float = _training(0.0, "muon: decoupled weight decay of the orthogonalised matrices (times the learning rate).", ge=0)
    muon_consistent_rms: float = _training(0.2, "muon: scale updates to this RMS (x sqrt(max(fan_in, fan_out)), so AdamW's learning rate carries over); 0 = the shape rule sqrt(max(1, fan_out / fan_in)).", ge=0)
    lion_b1: float = _training(0.9, "lion: interpolation of the update's sign.", ge=0, le=1)
    lion_b2: float = _training(0.99, "lion: momentum decay.", ge=0, le=1)
    lion_weight_decay: float = _training(0.1, "lion: decoupled weight decay (times the learning rate).", ge=0)
    adafactor_factored: bool = _training(True, "adafactor: factored second moment (rows x columns) for matrices with both dims >= 128.")
    adafactor_decay_rate: float = _training(0.8, "adafactor: second-moment decay exponent (decay = 1 - step^-rate).", gt=0)
    adafactor_clipping_threshold: float = _training(1.0, "adafactor: clip each update's RMS to this; 0 = off.", ge=0)
    adafactor_multiply_by_parameter_scale: bool = _training(False, "adafactor: scale updates by each parameter's RMS.")
    adafactor_relative_step: bool = _training(False, "adafactor: use the relative step min(1e-2, 1/sqrt(step)) instead of learning_rate and its schedule.")
    sgd_momentum: float = _training(0.0, "sgd: momentum; 0 = none (no optimizer state).", ge=0, le=1)
    sgd_nesterov: bool = _training(False, "sgd: Nesterov momentum.")
    optimizer_groups: list = _training([], "Per-parameter optimizers: a list of {pattern, opt_type, lr_multiplier, weight_decay, frozen}; the first glob matching a parameter path (as the checkpoint names it, e.g. decoder/*/self_attention/*) wins.")
    skip_step_on_spikes: bool = _training(False, "Skip the update when the loss or grad norm exceeds skip_step_spike_factor x its mean over the last skip_step_interval steps.")
    skip_step_interval: int = _training(128, "Steps in the running mean of skip_step_on_spikes (it starts skipping once half are in).", gt=1)
    skip_step_spike_factor: float = _training(2.0, "A loss or grad norm this many times its running mean is a spike.", gt=1)
    ema_decay: float = _training(0.0, "Keep an exponential moving average of the weights with this decay (used for eval and export); 0 = off.", ge=0, le=0.9999)
    gradient_clipping_threshold: float = _training(1.0, "Global-norm gradient clipping; 0 = off.", ge=0)
    gradient_accumulation_steps: int = _training(1, "Microbatches per optimizer step (the batch is split, gradients summed).", gt=0)
    z_loss_multiplier: float = _training(0.0, "Weight of the z-loss (mean squared log-partition) added to the loss.", ge=0)
    log_period: int = _training(25, "Log metrics every this many steps.", gt=0)
    eval_interval: int = _training(50, "Evaluate every this many steps (and at the last step); 0 = only at the end.", ge=0)
    eval_steps: int = _training(4, "Eval batches per evaluation.", gt=0)
    peak_tflops_per_device: float = _training(0.0, "Peak TFLOP/s per device for MFU; 0 = known accelerator table, or a measured matmul peak on CPU.", ge=0)

    # Data.
    dataset_type: str = _data("builtin", "builtin (shipped Shakespeare corpus), synthetic (random tokens), grain, hf or tfds (docs/data.md).", choices=DatasetType)
    tokenizer_path: str = _data("assets/tokenizer/shakespeare.model", "SentencePiece model; relative paths resolve from the cwd, then the repo.", saved=True)
    data_shuffle_seed: int = _data(0, "Seed of the data order.", ge=0)
    eval_split_fraction: float = _data(0.02, "Share of documents held out for eval.", gt=0, le=0.5)
    add_bos: bool = _data(True, "Prepend BOS to each document.", saved=True)
    add_eos: bool = _data(True, "Append EOS to each document.", saved=True)
    packing: bool = _data(True, "Pack several documents per row (segment ids keep them apart).")

    # Checkpointing.
    enable_checkpointing: bool = _checkpointing(True, "Save checkpoints under <run dir>/checkpoints.")
    checkpoint_period: int = _checkpointing(300, "Save every this many steps (and at the end).", gt=0)
    async_checkpointing: bool = _checkpointing(True, "Write checkpoints in the background while training continues.")
    max_num_checkpoints_to_keep: int = _checkpointing(3, "Keep the newest N checkpoints; 0 = keep all.", ge=0)
    load_parameters_path: str = _checkpointing("", "Start from the parameters of this checkpoint (params only; fresh optimizer).")
    load_ema_params: bool = _checkpointing(True, "Of a checkpoint whose run kept an EMA of the weights (ema_decay > 0), decode, serve, quantize and load_parameters_path read the EMA; false reads the raw parameters.")
    reset_optimizer_state: bool = _checkpointing(False, "Resume a run whose optimizer settings changed (opt_type, optimizer_groups, clipping, EMA, spike skipping) with its parameters, step and data position and a fresh optimizer state.")

    # Profiling.
    profiler: str = _profiling('', '"" = off, or "xplane" (trace for TensorBoard\'s profile plugin).', choices=Profiler)
    skip_first_n_steps_for_profiler: int = _profiling(5, "Steps to skip before tracing.", ge=0)
    profiler_steps: int = _profiling(5, "Steps to trace.", gt=0)

    # Decoding.
    prompt: str = _decoding('ROMEO:', "Prompt for MaxText.decode; several prompts separated by '|'.")
    max_prefill_predict_length: int = _decoding(64, "Prompt bucket length (prompts are padded to it).", gt=0)
    max_decode_steps: int = _decoding(128, "New tokens to generate at most (also bounded by max_target_length).", ge=0)
    decode_sampling_strategy: str = _decoding("weighted", "greedy, weighted (temperature), topk or nucleus (top-p).", choices=SamplingStrategy)
    decode_sampling_temperature: float = _decoding(0.8, "Sampling temperature.", gt=0)
    decode_sampling_top_k: int = _decoding(0, "topk: keep the k most likely tokens (0 = off).", ge=0)
    decode_sampling_nucleus_p: float = _decoding(1.0, "nucleus: keep the smallest set with this cumulative probability.", gt=0, le=1)
    decode_sampling_seed: int = _decoding(0, "Sampling seed.", ge=0)

    # Parallelism.
    mesh_axes: list = _parallelism(["data", "stage", "fsdp", "fsdp_transpose", "sequence", "context", "tensor", "tensor_sequence", "expert", "autoregressive"], "Device mesh axes, outermost first (each listed once; ici/dcn degrees per axis below and under Scale-out).")
    ici_data_parallelism: int = _parallelism(1, "Data-parallel degree; -1 = fill the remaining devices.", ge=-1)
    ici_fsdp_parallelism: int = _parallelism(-1, "FSDP (ZeRO-3) degree; -1 = fill the remaining devices.", ge=-1)
    ici_tensor_parallelism: int = _parallelism(1, "Tensor-parallel degree; -1 = fill the remaining devices.", ge=-1)
    logical_axis_rules: list = _parallelism([["activation_batch", ["data", "fsdp", "fsdp_transpose", "expert"]], ["activation_norm_length", ["tensor_sequence", "context", "sequence"]], ["activation_length", ["sequence", "context"]], ["activation_heads", ["tensor", "tensor_sequence"]], ["activation_kv_heads", ["tensor", "tensor_sequence"]], ["activation_mlp", ["tensor", "tensor_sequence"]], ["activation_vocab", ["tensor", "tensor_sequence"]], ["layers", "stage"], ["exp", "expert"], ["mlp", ["fsdp_transpose", "tensor", "tensor_sequence", "autoregressive"]], ["vocab", ["tensor", "tensor_sequence", "autoregressive"]], ["heads", ["tensor", "tensor_sequence", "autoregressive"]], ["q_heads", ["tensor", "tensor_sequence", "autoregressive"]], ["kv_heads", ["tensor", "tensor_sequence", "autoregressive"]], ["embed", ["fsdp", "fsdp_transpose", "sequence", "context", "expert"]], ["embed", ["fsdp", "sequence", "context", "expert"]], ["embed", ["fsdp", "fsdp_transpose", "sequence", "context"]], ["embed", ["fsdp", "sequence", "context"]], ["norm", ["fsdp", "sequence", "context", "expert"]]], "Logical axis name -> mesh axes; the first rule whose axes are still free wins. Size-1 axes are ignored.")

    # Data sources.
    grain_train_files: str = _data_sources('', 'grain: ArrayRecord/Parquet glob, or a weighted mixture "a*.array_record:0.7;b*.parquet:0.3".')
    grain_eval_files: str = _data_sources('', 'grain: eval glob(s); "" = hold out eval_split_fraction of the train documents.')
    grain_worker_count: int = _data_sources(0, "Worker processes that read and tokenize records (0 = in the training process).", ge=0)
    packing_type: str = _data_sources("first_fit", "first_fit (whole documents into open rows) or concat (concatenate, cut every max_target_length).", choices=PackingType)
    train_data_columns: str = _data_sources("text", "Record column holding the text (or the token ids when tokenize_train_data=false).")
    tokenize_train_data: bool = _data_sources(True, "false: the column holds token ids (e.g. from MaxText.prepare_data); BOS/EOS still added.")
    hf_path: str = _data_sources("", "hf: datasets builder for local files (json, parquet, text, arrow, csv) or a save_to_disk directory.")
    hf_data_files: str = _data_sources('', "hf: local file glob(s), ';'-separated.")
    hf_eval_files: str = _data_sources('', 'hf: eval file glob(s); "" = eval_split, else a held-out share of train.')
    hf_streaming: bool = _data_sources(False, "hf: read records one by one instead of loading the dataset (data larger than memory).")
    dataset_name: str = _data_sources("", "tfds: name:version, e.g. my_corpus:1.0.0.")
    dataset_path: str = _data_sources("", "tfds: the data_dir holding dataset_name.")
    train_split: str = _data_sources("train", "hf (save_to_disk) / tfds split to train on.")
    eval_split: str = _data_sources('', 'hf (save_to_disk) / tfds split to evaluate on; "" = hold out eval_split_fraction of train.')
    target_eval_loss: float = _data_sources(0.0, "Stop training once an eval loss is <= this (0 = off).", ge=0)

    # Scale-out.
    jax_distributed_initialization_timeout: int = _scale_out(300, "Seconds a multi-process run waits for every process to join before exiting (code 4).", gt=0)
    ici_pipeline_parallelism: int = _scale_out(1, "Pipeline (stage axis) degree within a slice; -1 = fill.", ge=-1)
    ici_fsdp_transpose_parallelism: int = _scale_out(1, "FSDP over the mlp axis degree within a slice; -1 = fill.", ge=-1)
    ici_sequence_parallelism: int = _scale_out(1, "Sequence degree within a slice; -1 = fill.", ge=-1)
    ici_context_parallelism: int = _scale_out(1, "Context degree within a slice; -1 = fill.", ge=-1)
    ici_tensor_sequence_parallelism: int = _scale_out(1, "Tensor-sequence degree within a slice; -1 = fill.", ge=-1)
    ici_expert_parallelism: int = _scale_out(1, "Expert degree within a slice; -1 = fill.", ge=-1)
    ici_autoregressive_parallelism: int = _scale_out(1, "Autoregressive (decode) degree within a slice; -1 = fill.", ge=-1)
    dcn_data_parallelism: int = _scale_out(-1, "Data degree across slices (one -1 fills the slices); hybrid mesh when > 1 slice.", ge=-1)
    dcn_pipeline_parallelism: int = _scale_out(1, "Pipeline (stage axis) degree across slices (one -1 fills the slices); hybrid mesh when > 1 slice.", ge=-1)
    dcn_fsdp_parallelism: int = _scale_out(1, "FSDP degree across slices (one -1 fills the slices); hybrid mesh when > 1 slice.", ge=-1)
    dcn_fsdp_transpose_parallelism: int = _scale_out(1, "FSDP over the mlp axis degree across slices (one -1 fills the slices); hybrid mesh when > 1 slice.", ge=-1)
    dcn_sequence_parallelism: int = _scale_out(1, "Sequence degree across slices (one -1 fills the slices); hybrid mesh when > 1 slice.", ge=-1)
    dcn_context_parallelism: int = _scale_out(1, "Context degree across slices (one -1 fills the slices); hybrid mesh when > 1 slice.", ge=-1)
    dcn_tensor_parallelism: int = _scale_out(1, "Tensor degree across slices (one -1 fills the slices); hybrid mesh when > 1 slice.", ge=-1)
    dcn_tensor_sequence_parallelism: int = _scale_out(1, "Tensor-sequence degree across slices (one -1 fills the slices); hybrid mesh when > 1 slice.", ge=-1)
    dcn_expert_parallelism: int = _scale_out(1, "Expert degree across slices (one -1 fills the slices); hybrid mesh when > 1 slice.", ge=-1)
    dcn_autoregressive_parallelism: int = _scale_out(1, "Autoregressive (decode) degree across slices (one -1 fills the slices); hybrid mesh when > 1 slice.", ge=-1)
    sharding_tolerance: float = _scale_out(0.02, "Train refuses (exit 2) when a device holds this fraction more params than a perfectly sharded share.", ge=0)

    # Mixture of experts.
    num_experts: int = _mixture_of_experts(0, "Routed experts per MoE layer; 0 = dense MLP layers only.", ge=0, model=True, saved=True)
    num_experts_per_tok: int = _mixture_of_experts(1, "Experts each token is routed to (top-k).", gt=0, model=True, saved=True)
    base_moe_mlp_dim: int = _mixture_of_experts(0, "Hidden size of each routed (and shared) expert.", ge=0, model="moe_mlp_dim", saved=True)
    moe_score_func: str = _mixture_of_experts("softmax", "Router scores: softmax over experts, or an independent sigmoid per expert.", choices=ScoreFunc, model=True, saved=True)
    norm_topk_prob: bool = _mixture_of_experts(False, "Renormalise the chosen experts' scores to sum to one.", model=True, saved=True)
    moe_n_group: int = _mixture_of_experts(1, "Expert groups for group-limited routing (1 = no groups).", gt=0, model=True, saved=True)
    moe_topk_group: int = _mixture_of_experts(1, "Groups each token may choose experts from.", gt=0, model=True, saved=True)
    moe_group_score: str = _mixture_of_experts('max', "A group's score: its best expert (max) or its two best summed (top2_sum).", choices=GroupScore, model=True, saved=True)
    moe_score_correction_bias: bool = _mixture_of_experts(False, "A per-expert bias added to the scores only to choose experts (DeepSeek V3).", model=True, saved=True)
    routed_scaling_factor: float = _mixture_of_experts(1.0, "Multiplies the routed experts' weights.", gt=0, model=True, saved=True)
    num_shared_experts: int = _mixture_of_experts(0, "Always-on experts: one MLP of num_shared_experts x base_moe_mlp_dim.", ge=0, model=True, saved=True)
    first_num_dense_layers: int = _mixture_of_experts(0, "Leading layers with a dense MLP of base_mlp_dim (their own stack).", ge=0, model=True, saved=True)
    capacity_factor: float = _mixture_of_experts(0.0, "<= 0: dropless; > 0: each expert takes ceil(tokens x k / E x this) tokens, drops the rest.", model=True)
    load_balance_loss_weight: float = _mixture_of_experts(0.01, "Weight of the Switch load-balance loss (mean over MoE layers) in the training loss.", ge=0)

    # Latent attention (MLA).
    q_lora_rank: int = _latent_attention_mla(0, "MLA query low rank (0 = a full-rank query projection).", ge=0, model=True, saved=True)
    kv_lora_rank: int = _latent_attention_mla(0, "MLA key/value latent size; > 0 for the deepseek blocks.", ge=0, model=True, saved=True)
    qk_nope_head_dim: int = _latent_attention_mla(128, "MLA: per-head query/key part without RoPE.", gt=0, model=True, saved=True)
    qk_rope_head_dim: int = _latent_attention_mla(64, "MLA: per-head query/key part with RoPE (one rope key shared by all heads).", gt=0, model=True, saved=True)
    v_head_dim: int = _latent_attention_mla(128, "MLA: value head size.", gt=0, model=True, saved=True)
    rope_interleave: bool = _latent_attention_mla(False, "RoPE pairs are adjacent dims (x0, x1), (x2, x3), ... (DeepSeek) instead of halves.", model=True, saved=True)
    rope_yarn_beta_fast: float = _latent_attention_mla(32.0, "rope_type=yarn: extrapolate frequencies turning more than this often over the original context.", gt=0, model=True, saved=True)
    rope_yarn_beta_slow: float = _latent_attention_mla(1.0, "rope_type=yarn: interpolate frequencies turning less than this often.", gt=0, model=True, saved=True)
    rope_yarn_mscale: float = _latent_attention_mla(0.0, "rope_type=yarn: mscale of the cos/sin factor (0 = unset).", ge=0, model=True, saved=True)
    rope_yarn_mscale_all_dim: float = _latent_attention_mla(0.0, "rope_type=yarn: mscale_all_dim; the attention scale is multiplied by its mscale squared (0 = unset).", ge=0, model=True, saved=True)

    # Serving.
    decode_batch_size: int = _serving(8, "Decode slots: the fixed batch of the serving engine (requests join and leave it).", gt=0)
    kv_cache: str = _serving("contiguous", "KV cache layout for decode and serve: contiguous (one row per slot) or paged.", choices=KVCacheKind)
    kv_page_size: int = _serving(16, "paged: token slots per page.", gt=0)
    kv_num_pages: int = _serving(0, "paged: pages in the pool (page 0 is reserved); 0 = every slot at full length.", ge=0)
    serve_host: str = _serving("127.0.0.1", "MaxText.serve: interface to listen on.")
    port: int = _serving(8000, "MaxText.serve: TCP port.", ge=0, le=65535)
    api_key: str = _serving('', 'MaxText.serve: when set, requests need "Authorization: Bearer <api_key>".')
    max_queue_size: int = _serving(64, "MaxText.serve: waiting requests beyond this get HTTP 429.", gt=0)
    chat_template: str = _serving('', 'Jinja chat template; "" = the tokenizer\'s, else "role: content" lines.')

    # Quantization.
    quantization: str = _quantization('', 'Matmul quantization, train and decode: "" (off), int8 (weights + activations), int8w (weights only), fp8 (e4m3).', choices=Quantization, model=True, saved=True)
    checkpoint_is_quantized: bool = _quantization(False, "The loaded parameters hold int8 kernels + kernel_scale (written by save_quantized_params_path); needs quantization=int8 or int8w.", model=True, saved=True)
    save_quantized_params_path: str = _quantization("", "MaxText.convert quantize: where to write the int8 parameters + scales (an orbax checkpoint for load_parameters_path).")
    quantize_kvcache: bool = _quantization(False, "Store decode K/V as kv_quant_dtype with one scale per token and head (contiguous and paged caches).", model=True)
    kv_quant_dtype: str = _quantization("int8", "Quantized KV cache element type (quantize_kvcache=true).", choices=KVQuantDType, model=True)

    # AOT compile and memory.
    compile_topology: str = _aot_compile_memory("", "MaxText.train_compile target: local (this machine) or a TPU slice (v4-8, v5e-256, v5p-128, v6e-16, ...).")
    compile_topology_num_slices: int = _aot_compile_memory(1, "MaxText.train_compile: number of slices of compile_topology (multislice over DCN).", gt=0)
    compiled_trainstep_file: str = _aot_compile_memory("", "train_compile writes the compiled train step here; train loads it instead of compiling.")
    query_proj: str = _aot_compile_memory("remat", "remat_policy=custom: the query projection output.", choices=RematPlacement)
    key_proj: str = _aot_compile_memory("remat", "remat_policy=custom: the key projection output.", choices=RematPlacement)
    value_proj: str = _aot_compile_memory("remat", "remat_policy=custom: the value projection output.", choices=RematPlacement)
    context: str = _aot_compile_memory("remat", "remat_policy=custom: the attention output before the out projection.", choices=RematPlacement)
    out_proj: str = _aot_compile_memory("remat", "remat_policy=custom: the attention out projection output.", choices=RematPlacement)
    mlpwi: str = _aot_compile_memory("remat", "remat_policy=custom: each MLP input projection output.", choices=RematPlacement)
    mlpwo: str = _aot_compile_memory("remat", "remat_policy=custom: the MLP output projection output.", choices=RematPlacement)

    # Pipeline and expert parallelism.
    num_pipeline_microbatches: int = _pipeline_expert_parallelism(-1, "Microbatches per forward pass through the pipeline stages (GPipe schedule); -1 = one per stage.", ge=-1, model=True)


    # Post-training.
    use_sft: bool = _post_training(False, "Supervised fine-tuning: records are chat conversations or prompt/completion pairs, rendered with the chat template (docs/post_training.md).")
    sft_train_on_completion_only: bool = _post_training(True, "use_sft: only the assistant's (completion) tokens count in the loss; false = every token.")
    sft_overlong: str = _post_training("truncate", "use_sft: a record longer than max_target_length is truncated or dropped (the count is logged).", choices=SftOverlong)
    lora_rank: int = _post_training(0, "LoRA rank r of the adapters on lora_target_modules; base weights are frozen; 0 = off.", ge=0, model=True, saved=True)
    lora_alpha: float = _post_training(16.0, "LoRA scale numerator: adapters add (lora_alpha / lora_rank) x B A x.", gt=0, model=True, saved=True)
    lora_dropout: float = _post_training(0.0, "Dropout on the adapters' input during training.", ge=0, le=1, model=True)
    lora_target_modules: list = _post_training(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "Projections that get adapters, named as PEFT names them (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; MLA's q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj; experts: the routed experts).", model=True, saved=True)
    lora_path: str = _post_training("", "decode, chat, api.load: apply the LoRA adapters of this run or step directory (unmerged).")
    lora_paths: str = _post_training("", "MaxText.serve: LoRA adapters served at once beside the base, name=dir,name=dir; a request's model field picks one (same rank and targets).")

    # fmt: on

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)


def _setting(field: dataclasses.Field) -> Setting:
    meta = dict(field.metadata)
    model = meta.pop("model")
    default = field.default_factory() if field.default is dataclasses.MISSING else field.default
    return Setting(
        name=field.name,
        type=field.type,
        default=default,
        model=field.name if model is True else model,
        **meta,
    )


SETTINGS = {f.name: _setting(f) for f in dataclasses.fields(Config)}
MESH_AXES = tuple(a.value for a in MeshAxis)
# The named activations remat_policy=custom places one by one (layers/remat.py), each a config key.
REMAT_TENSORS = tuple(name for name, s in SETTINGS.items() if s.choices is RematPlacement)
