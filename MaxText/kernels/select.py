"""Which kernel runs, by the `attention` setting, the platform and the phase (table in docs/serving.md).

Phases: "attend" is attention among the same T tokens (train and prefill); "decode" is a step over the KV
cache. `attention` names a train/prefill kernel (dot_product, flash, splash), the paged decode kernel
(paged), or asks for the table (autoselected). Resolution happens at trace time, so it costs nothing per step.
"""

import jax

from MaxText.config.choices import AttentionKernel as K

# CPU, attend phase: below this many keys dot_product (one [T, S] matmul) is faster than the blockwise scan,
# and its [T, S] float32 scores per head still fit in cache-friendly memory; above it flash keeps O(T) memory.
CPU_FLASH_MIN_LENGTH = 1024

ATTEND_KERNELS = (K.DOT_PRODUCT, K.FLASH, K.SPLASH)
# The settings that ask for a table rather than naming a train/prefill kernel.
TABLE_SETTINGS = (K.PAGED, K.AUTOSELECTED)


def platform() -> str:
    """cpu | gpu | tpu: the default backend, with CUDA and ROCm both counted as gpu."""
    name = jax.default_backend()
    return "gpu" if name in ("gpu", "cuda", "rocm") else name


def attend_kernel(attention: str, on: str, length: int) -> str:
    """Kernel for the attend phase: dot_product | flash | splash.

    dot_product, flash and splash run as named; paged (a decode kernel) and autoselected take the table:
    TPU splash, GPU flash (the Pallas kernel), CPU flash from CPU_FLASH_MIN_LENGTH keys, else dot_product."""
    if attention in ATTEND_KERNELS:
        return attention
    if attention not in TABLE_SETTINGS:
        raise ValueError(f"attention={attention!r}: expected one of {', '.join(K)}")
    if on == "tpu":
        return "splash"
    if on == "gpu" or length >= CPU_FLASH_MIN_LENGTH:
        return "flash"
    return "dot_product"


def decode_kernel(attention: str, on: str, paged: bool) -> str:
    """Kernel for a decode step: dot_product | paged | paged_reference.

    Contiguous cache: dot_product (one query per row against the cache; the kernels above gain nothing).
    Paged cache: the Pallas paged kernel for attention=paged, and for autoselected off TPU (its whole-pool
    blocks do not fit TPU VMEM); otherwise the reference (gather the row's pages, then dot_product)."""
    if not paged:
        return "dot_product"
    if attention == "paged" or (attention == "autoselected" and on != "tpu"):
        return "paged"
    return "paged_reference"
