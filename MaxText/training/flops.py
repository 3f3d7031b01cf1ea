"""Analytic training FLOPs and the per-device peak used for MFU.

Training FLOPs per step (the model's FLOPs; remat recompute is not counted):
    6 * P_matmul * tokens                         weights: 2 FLOPs per multiply-add, x3 for fwd + bwd
  + 2 * 2 * pairs * N * H * L * 3                 attention scores (QK^T) and values (PV), fwd + bwd
                                                (MLA: 2 * pairs * N * (P + O + V) * L * 3)
  + 6 * tokens * D * V                            output logits
where P_matmul counts the non-embedding matmul parameters a token goes through (q, k, v, o and the MLP; in
MoE layers the router and the top-k routed and the shared experts, not the idle experts), tokens = B x T and
`pairs` the (query, key) pairs attended per row, summed per layer: T^2 / 2 for causal attention, fewer in
layers with a window W < T (Gemma 2/3 alternate windowed and global layers). The per-layer pair count
replaces DESIGN's `S^2 x layers / 2`; they agree when no layer has a window.
MFU = (FLOPs per step / step time) / (devices x peak FLOP/s per device).

LoRA (lora_rank > 0): a frozen weight needs no weight gradient, so the frozen matmuls and the output logits
count 4 (forward + input gradient) instead of 6, and every adapter parameter a token goes through counts
6 (`adapter_params`: the adapters' lora_a and lora_b sizes over all layers). Adapted routed experts keep 6:
their effective weight W + AB is differentiated whole before the gradient reaches A and B.
"""

import time

import jax
import jax.numpy as jnp

from MaxText.config.derived import ModelConfig
from MaxText.models import registry

# Dense bf16 peak TFLOP/s per device (chip) from vendor data sheets, matched against device_kind.
PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L4", 121.0),
    ("TPU v6", 918.0),
    ("TPU v5p", 459.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v4", 275.0),
)


def matmul_params_per_layer(cfg: ModelConfig, moe: bool = False) -> int:
    """Matmul parameters one token goes through in one layer. In a MoE layer (`moe`): the router, its
    num_experts_per_tok routed experts and the shared experts, each expert an MLP of moe_mlp_dim."""
    d, f = cfg.emb_dim, cfg.mlp_dim
    # q, k, v and o, or the family's own attention (MLA: its low-rank projections; FamilySpec).
    attention = registry.family(cfg.decoder_block).attention_params(cfg)
    matrices = len(cfg.mlp_activations) + 1
    if not moe:
        return attention + matrices * d * f
    experts = cfg.num_experts_per_tok + cfg.num_shared_experts
    return attention + d * cfg.num_experts + experts * matrices * d * cfg.moe_mlp_dim


def matmul_params_all_layers(cfg: ModelConfig) -> int:
    """matmul_params_per_layer summed over the layers of every stack (dense and MoE layers apart)."""
    total = 0
    for stack in registry.stacks(cfg):
        layers = stack.length * len(stack.sublayers or (None,))
        total += layers * matmul_params_per_layer(cfg, getattr(stack.block, "MOE", False))
    return total


def attended_pairs(length: int, window: int) -> float:
    """Causal (query, key) pairs per row: T^2 / 2, or the exact count under a sliding window W < T."""
    if window <= 0 or window >= length:
        return length * length / 2
    return window * (window + 1) / 2 + (length - window) * window


def attended_pairs_all_layers(cfg: ModelConfig, length: int) -> float:
    """Causal (query, key) pairs per row summed over all layers, each layer with its own window."""
    total = 0.0
    for stack in registry.stacks(cfg):
        for is_global in stack.global_layers:
            window = 0 if is_global else cfg.sliding_window_size
            total += stack.length * attended_pairs(length, window)
    return total


def score_and_value_dims(cfg: ModelConfig) -> int:
    """Query-key plus value head sizes: 2H, or the family's own (MLA: P + O + V)."""
    return registry.family(cfg.decoder_block).score_value_dims(cfg)


def routed_expert_params_all_layers(cfg: ModelConfig) -> int:
    """The routed experts' matmul parameters a token goes through (its top-k experts), over all MoE layers."""
    total = 0
    for stack in registry.stacks(cfg):
        if getattr(stack.block, "MOE", False):
            layers = stack.length * len(stack.sublayers or (None,))
            matrices = len(cfg.mlp_activations) + 1
            total += layers * cfg.num_experts_per_tok * matrices * cfg.emb_dim * cfg.moe_mlp_dim
    return total


def train_flops_per_step(cfg: ModelConfig, batch: int, length: int, adapter_params: int = 0) -> float:
    """The model's FLOPs of one training step (module docstring); adapter_params for LoRA runs."""
    tokens = batch * length
    matmul = matmul_params_all_layers(cfg)
    weights = 6 * matmul * tokens
    attention = (
        6 * batch * attended_pairs_all_layers(cfg, length) * cfg.num_query_heads * score_and_value_dims(cfg)
    )
    logits = 6 * tokens * cfg.emb_dim * cfg.vocab_size
    if cfg.lora_rank > 0:
        differentiated = routed_expert_params_all_layers(cfg) if "experts" in cfg.lora_target_modules else 0
        weights += -2 * (matmul - differentiated) * tokens + 6 * adapter_params * tokens
        logits -= 2 * tokens * cfg.emb_dim * cfg.vocab_size
    return float(weights + attention + logits)


def _measure_matmul_tflops(n: int = 1024, repeats: int = 5) -> float:
    """Best-of float32 n x n matmul throughput on the default device, in TFLOP/s."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def peak_tflops_per_device(configured: float, kind: str = "") -> tuple:
    """(peak TFLOP/s per device, where it came from). Config key wins; then the table for `kind` (default:
    this machine's device kind); then a measurement."""
    if configured > 0:
        return configured, "peak_tflops_per_device"
    kind = kind or jax.devices()[0].device_kind
    for name, peak in PEAK_TFLOPS:
        if name.lower() in kind.lower():
            return peak, f"{kind} bf16 dense data sheet"
    # CPU: the fake devices of one host share its cores, so each gets a share of the measured peak.
    measured = _measure_matmul_tflops() / max(jax.local_device_count(), 1)
    return measured, f"measured float32 matmul on {kind}"
