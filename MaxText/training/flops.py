"""Analytic training FLOPs and the per-device peak used for MFU.

Training FLOPs per step (the model's FLOPs; remat recompute is not counted):
    6 * P_matmul * tokens                         weights: 2 FLOPs per multiply-add, x3 for fwd + bwd
  + 2 * 2 * pairs * N * H * L * 3                 attention scores (QK^T) and values (PV), fwd + bwd
  + 6 * tokens * D * V                            output logits
where P_matmul counts the non-embedding matmul parameters (q, k, v, o and the MLP), tokens = B x T and
`pairs` the (query, key) pairs attended per row, summed per layer: T^2 / 2 for causal attention, fewer in
layers with a window W < T (Gemma 2/3 alternate windowed and global layers). The per-layer pair count
replaces DESIGN's `S^2 x layers / 2`; they agree when no layer has a window.
MFU = (FLOPs per step / step time) / (devices x peak FLOP/s per device).
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


def matmul_params_per_layer(cfg: ModelConfig) -> int:
    d, n, k, h, f = cfg.emb_dim, cfg.num_query_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    attention = d * n * h + 2 * d * k * h + n * h * d
    mlp = d * f * len(cfg.mlp_activations) + f * d
    return attention + mlp


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


def train_flops_per_step(cfg: ModelConfig, batch: int, length: int) -> float:
    tokens = batch * length
    weights = 6 * matmul_params_per_layer(cfg) * cfg.num_decoder_layers * tokens
    attention = 12 * batch * attended_pairs_all_layers(cfg, length) * cfg.num_query_heads * cfg.head_dim
    logits = 6 * tokens * cfg.emb_dim * cfg.vocab_size
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


def peak_tflops_per_device(configured: float) -> tuple:
    """(peak TFLOP/s per device, where it came from). Config key wins; then the table; then a measurement."""
    if configured > 0:
        return configured, "peak_tflops_per_device"
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_TFLOPS:
        if name.lower() in kind.lower():
            return peak, f"{kind} bf16 dense data sheet"
    # CPU: the fake devices of one host share its cores, so each gets a share of the measured peak.
    measured = _measure_matmul_tflops() / max(jax.local_device_count(), 1)
    return measured, f"measured float32 matmul on {kind}"
