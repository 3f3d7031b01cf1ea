"""decoder_block name -> family module. A family module defines its block class(es) and `stacks(cfg)`.

The table holds module paths, not imports, so config validation can list the names without importing JAX.
A new family is one block file, one row here and one YAML under configs/models/.
"""

import importlib
from typing import NamedTuple

FAMILIES = {
    "llama2": "MaxText.models.llama",
    "mistral": "MaxText.models.llama",
}
BLOCK_NAMES = tuple(FAMILIES)


class Stack(NamedTuple):
    """A run of identical scanned units. `block` is a Linen module class; `length` units of it."""

    name: str
    block: type
    length: int


def stacks(cfg) -> list:
    """The decoder's stacks for a ModelConfig, in order (e.g. dense-first layers, then the rest)."""
    if cfg.decoder_block not in FAMILIES:
        raise ValueError(f"decoder_block={cfg.decoder_block!r}: expected one of {', '.join(BLOCK_NAMES)}")
    return importlib.import_module(FAMILIES[cfg.decoder_block]).stacks(cfg)
