"""decoder_block name -> family module. A family module defines its block class(es) and `stacks(cfg)`.

The table holds module paths, not imports, so config validation can list the names without importing JAX.
A new family is one block file, one row here and one YAML under configs/models/.
"""

import importlib
from typing import NamedTuple

FAMILIES = {
    "llama2": "MaxText.models.llama",
    "mistral": "MaxText.models.llama",
    "gemma": "MaxText.models.gemma",
    "gemma2": "MaxText.models.gemma2",
    "gemma3": "MaxText.models.gemma3",
    "qwen3": "MaxText.models.qwen3",
    "gpt3": "MaxText.models.gpt3",
    "mixtral": "MaxText.models.mixtral",
    "qwen3_moe": "MaxText.models.qwen3_moe",
    "deepseek2": "MaxText.models.deepseek",
    "deepseek3": "MaxText.models.deepseek",
}
BLOCK_NAMES = tuple(FAMILIES)
# Blocks whose scanned unit is a group of `sliding_window_pattern` layers: local (sliding window) ones, then
# one global. The other blocks scan single layers and need sliding_window_pattern = 0.
LOCAL_GLOBAL_BLOCKS = ("gemma2", "gemma3")
# Blocks with mixture-of-experts layers; they need num_experts > 0 (the others need num_experts = 0).
MOE_BLOCKS = ("mixtral", "qwen3_moe", "deepseek2", "deepseek3")
# Blocks with multi-head latent attention; they need kv_lora_rank > 0.
MLA_BLOCKS = ("deepseek2", "deepseek3")


class Stack(NamedTuple):
    """A run of identical scanned units. `block` is a Linen module class; `length` units of it.

    sublayers: names of the layers inside one unit, each with its own KV cache (() = the unit is one layer).
    global_layers: for each sublayer (or the one layer), whether it attends globally rather than through
    the sliding window; used for FLOP counts.
    """

    name: str
    block: type
    length: int
    sublayers: tuple = ()
    global_layers: tuple = (False,)


def stacks(cfg) -> list:
    """The decoder's stacks for a ModelConfig, in order (e.g. dense-first layers, then the rest)."""
    if cfg.decoder_block not in FAMILIES:
        raise ValueError(f"decoder_block={cfg.decoder_block!r}: expected one of {', '.join(BLOCK_NAMES)}")
    return importlib.import_module(FAMILIES[cfg.decoder_block]).stacks(cfg)
