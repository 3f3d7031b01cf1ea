"""The allowed values of the settings that name an implementation, one Enum each.

Config sits below every package that implements these choices, so the Enums live here and the
implementations key their tables by them (tests/config checks that each table covers its Enum exactly).
Members are StrEnums: a config value is a plain string and compares equal to its member.
"""

import enum


class DType(enum.StrEnum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class Precision(enum.StrEnum):
    DEFAULT = "default"
    HIGH = "high"
    HIGHEST = "highest"


class Activation(enum.StrEnum):
    SILU = "silu"
    GELU = "gelu"
    GELU_TANH = "gelu_tanh"
    RELU = "relu"
    LINEAR = "linear"


class AttentionKernel(enum.StrEnum):
    """The `attention` setting: a train/prefill kernel, the paged decode kernel, or the platform table."""

    DOT_PRODUCT = "dot_product"
    FLASH = "flash"
    SPLASH = "splash"
    PAGED = "paged"
    AUTOSELECTED = "autoselected"


class RopeType(enum.StrEnum):
    DEFAULT = "default"
    LLAMA3 = "llama3"
    LINEAR = "linear"
    YARN = "yarn"


class NormType(enum.StrEnum):
    RMSNORM = "rmsnorm"
    LAYERNORM = "layernorm"


class RematPolicy(enum.StrEnum):
    NONE = "none"
    MINIMAL = "minimal"
    SAVE_DOT_EXCEPT_MLP = "save_dot_except_mlp"
    SAVE_QKV_PROJ = "save_qkv_proj"
    SAVE_OUT_PROJ = "save_out_proj"
    FULL = "full"
    SAVE_DOT_EXCEPT_MLPWI = "save_dot_except_mlpwi"
    SAVE_DOT_WITH_CONTEXT_EXCEPT_MLP = "save_dot_with_context_except_mlp"
    QKV_PROJ_OFFLOADED = "qkv_proj_offloaded"
    MINIMAL_OFFLOADED = "minimal_offloaded"
    CUSTOM = "custom"


class RematPlacement(enum.StrEnum):
    """Where remat_policy=custom keeps one named activation: recomputed, saved on device, or offloaded."""

    REMAT = "remat"
    DEVICE = "device"
    OFFLOAD = "offload"


class DatasetType(enum.StrEnum):
    BUILTIN = "builtin"
    SYNTHETIC = "synthetic"
    GRAIN = "grain"
    HF = "hf"
    TFDS = "tfds"


class OptType(enum.StrEnum):
    """The `opt_type` setting (MaxText's names); training/optimizers.py has one builder per member."""

    ADAMW = "adamw"
    ADAM_PAX = "adam_pax"
    MUON = "muon"
    LION = "lion"
    ADAFACTOR = "adafactor"
    SGD = "sgd"


class LrScheduleType(enum.StrEnum):
    COSINE = "cosine"
    WSD = "wsd"
    LINEAR = "linear"
    CONSTANT = "constant"
    INVERSE_SQRT = "inverse_sqrt"


class WsdDecayStyle(enum.StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    ONE_MINUS_SQRT = "1-sqrt"


class PackingType(enum.StrEnum):
    FIRST_FIT = "first_fit"
    CONCAT = "concat"


class Profiler(enum.StrEnum):
    OFF = ""
    XPLANE = "xplane"


class SamplingStrategy(enum.StrEnum):
    GREEDY = "greedy"
    WEIGHTED = "weighted"
    TOPK = "topk"
    NUCLEUS = "nucleus"


class ScoreFunc(enum.StrEnum):
    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"


class GroupScore(enum.StrEnum):
    MAX = "max"
    TOP2_SUM = "top2_sum"


class KVCacheKind(enum.StrEnum):
    CONTIGUOUS = "contiguous"
    PAGED = "paged"


class Quantization(enum.StrEnum):
    NONE = ""
    INT8 = "int8"
    INT8W = "int8w"
    FP8 = "fp8"


# The quantization modes whose weights a checkpoint can store already quantized (int8 kernels + scales).
STORED_QUANTIZATION = (Quantization.INT8.value, Quantization.INT8W.value)


class KVQuantDType(enum.StrEnum):
    INT8 = "int8"


class MeshAxis(enum.StrEnum):
    """Device mesh axes as MaxText names them (parallel/mesh.py builds the mesh; mesh_axes orders them)."""

    DATA = "data"
    STAGE = "stage"
    FSDP = "fsdp"
    FSDP_TRANSPOSE = "fsdp_transpose"
    SEQUENCE = "sequence"
    CONTEXT = "context"
    TENSOR = "tensor"
    TENSOR_SEQUENCE = "tensor_sequence"
    EXPERT = "expert"
    AUTOREGRESSIVE = "autoregressive"


class SftOverlong(enum.StrEnum):
    """What use_sft does with a record longer than max_target_length."""

    TRUNCATE = "truncate"
    DROP = "drop"


class LoraTarget(enum.StrEnum):
    """The lora_target_modules names: PEFT's (Hugging Face's Llama- and DeepSeek-style) projection names."""

    Q_PROJ = "q_proj"
    K_PROJ = "k_proj"
    V_PROJ = "v_proj"
    O_PROJ = "o_proj"
    GATE_PROJ = "gate_proj"
    UP_PROJ = "up_proj"
    DOWN_PROJ = "down_proj"
    Q_A_PROJ = "q_a_proj"
    Q_B_PROJ = "q_b_proj"
    KV_A_PROJ_WITH_MQA = "kv_a_proj_with_mqa"
    KV_B_PROJ = "kv_b_proj"
    EXPERTS = "experts"  # the routed experts' weights (PEFT: target_parameters gate_up_proj, down_proj)
