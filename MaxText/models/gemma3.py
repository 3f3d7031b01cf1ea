"""Gemma 3 (text) block. The scanned unit is a group of sliding_window_pattern=6 layers: five sliding-window
layers with the local RoPE base (local_rope_max_timescale, unscaled), then one global layer with the global
base and its scaling (rope_type linear, factor 8 for 4b and larger). Layers have qk-norm and four norms, all
`1 + w` RMSNorms; no soft caps. Layers left after the last full group (26 = 4 x 6 + 2) are local and form
the stack "tail".

Parameters: decoder/layers/{local_0..local_4,global}/... (Hugging Face layer 6u + j) and decoder/tail/...
(Hugging Face layer 6G + t for G full groups).
"""

from MaxText.config.derived import ModelConfig
from MaxText.models.transformer_layer import GEMMA_NORMS, DecoderLayer, LocalGlobalGroup, local_global_stacks


class Gemma3DecoderLayer(DecoderLayer):
    """One Gemma 3 layer (local unless global_attention)."""

    NORM_NAMES = GEMMA_NORMS


class Gemma3Block(LocalGlobalGroup):
    """Five local layers then a global one (with the default pattern of 6)."""

    LAYER = Gemma3DecoderLayer


def stacks(cfg: ModelConfig) -> list:
    return local_global_stacks(cfg, Gemma3Block, Gemma3DecoderLayer)
