"""The kernel plan: which kernel runs, decided once from the `attention` setting and the target platform.

`plan_for(attention, target)` is called once, where the model is built (models/transformer.make_model, with the
platform of the devices the program is compiled for: train_compile's target, not this host). Layers and
kernels read the returned KernelPlan and never ask the platform again. Table (docs/serving.md):

| target | train / prefill (attend)                         | decode: contiguous / quantized | paged           | latent (MLA) |
| ------ | ------------------------------------------------ | ------------------------------ | --------------- | ------------ |
| TPU    | splash                                           | dot_product                    | paged_reference | absorbed     |
| GPU    | flash_pallas (Triton)                            | dot_product                    | paged (Pallas)  | absorbed     |
| CPU    | dot_product below 1024 keys, flash from 1024     | dot_product                    | paged (interp.) | absorbed     |

That is `autoselected` (and `paged`, whose attend phase is autoselected's). `dot_product`, `flash` and
`splash` name the attend kernel on every target (flash is the Pallas kernel on GPU and the blockwise pure-JAX
one elsewhere); their paged decode is the reference (gather the row's pages, then dot_product). `paged` runs
the Pallas paged kernel on every target; autoselected runs it off TPU (its whole-pool blocks do not fit TPU
VMEM). The paged kernel takes one query per row of float pages: a multi-token step or an int8 pool uses the
reference, which has the same definition.

`dot` is the backend's matmul choice (layers/linears.DenseGeneral): "cpu" uses the custom-VJP dense_dot and
pads one-row int8 products to two rows, both for XLA:CPU's sake; "xla" is the plain dot_general that TPU
and GPU compile well.
"""

import dataclasses

import jax

from MaxText.config.choices import AttentionKernel as K

# CPU, attend phase: below this many keys dot_product (one [T, S] matmul) is faster than the blockwise scan,
# and its [T, S] float32 scores per head still fit in cache-friendly memory; above it flash keeps O(T) memory.
CPU_FLASH_MIN_LENGTH = 1024

ATTEND_KERNELS = (K.DOT_PRODUCT, K.FLASH, K.SPLASH)
# The settings that ask for a table rather than naming a train/prefill kernel.
TABLE_SETTINGS = (K.PAGED, K.AUTOSELECTED)
TARGETS = ("cpu", "gpu", "tpu")
# Cache layouts a decode step reads (inference/kv_cache.py's LAYOUT of each cache type).
KV_LAYOUTS = ("contiguous", "quantized", "paged", "quantized_paged")
CACHE_LAYOUTS = KV_LAYOUTS + ("latent",)


def check_cache(cache, layouts: tuple, layer: str) -> None:
    """Trace-time check that a layer got a cache it can use (a LAYOUT in `layouts`), naming both if not."""
    layout = getattr(cache, "LAYOUT", None)
    if layout not in layouts:
        raise TypeError(
            f"{layer}: got a {type(cache).__name__} cache (layout {layout}); expected one of the layouts "
            f"{', '.join(layouts)} (inference/kv_cache.py builds the cache the model's blocks declare)"
        )


def platform_of(devices=None) -> str:
    """cpu | gpu | tpu: the platform of `devices` (default: the default backend's), CUDA and ROCm as gpu."""
    name = devices[0].platform if devices else jax.default_backend()
    return "gpu" if name in ("gpu", "cuda", "rocm") else name


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    """The kernels one model runs (see the module docstring). Hashable: a Linen attribute.

    attend / attend_short: the train/prefill kernel from `short_below` keys on, and below it.
    paged: the decode kernel over a paged cache (paged | paged_reference).
    dot: "cpu" | "xla", the dense matmul (module docstring).
    """

    target: str = "cpu"
    attend: str = "dot_product"
    attend_short: str = "dot_product"
    short_below: int = 0
    paged: str = "paged_reference"
    dot: str = "cpu"

    def attend_kernel(self, keys: int) -> str:
        """dot_product | flash | flash_pallas | splash for attention among tokens over `keys` keys."""
        return self.attend_short if keys < self.short_below else self.attend

    def interpret(self, kernel: str) -> bool:
        """Whether a Pallas kernel runs in the interpreter: off the platform it is written for (splash: TPU;
        the Triton kernels flash_pallas and paged: GPU)."""
        return self.target != ("tpu" if kernel == "splash" else "gpu")

    def decode_kernel(self, layout: str, tokens: int = 1) -> str:
        """The kernel of a decode step of `tokens` queries per row over a cache of `layout`:
        dot_product | paged | paged_reference | absorbed."""
        if layout not in CACHE_LAYOUTS:
            raise ValueError(f"cache layout {layout!r}: expected one of {CACHE_LAYOUTS}")
        if layout == "latent":
            return "absorbed"
        if layout == "paged" and tokens == 1:
            return self.paged
        if layout in ("paged", "quantized_paged"):
            return "paged_reference"
        return "dot_product"


def plan_for(attention: str, target: str) -> KernelPlan:
    """The KernelPlan for the `attention` setting on `target` (cpu | gpu | tpu)."""
    if target not in TARGETS:
        raise ValueError(f"target={target!r}: expected one of {TARGETS}")
    if attention not in ATTEND_KERNELS + TABLE_SETTINGS:
        raise ValueError(f"attention={attention!r}: expected one of {', '.join(K)}")
    flash = "flash_pallas" if target == "gpu" else "flash"
    short, short_below = None, 0
    if attention in ATTEND_KERNELS:
        attend = flash if attention == K.FLASH else str(attention)
    elif target == "tpu":
        attend = "splash"
    elif target == "gpu":
        attend = flash
    else:
        attend, short, short_below = flash, "dot_product", CPU_FLASH_MIN_LENGTH
    paged_kernel = attention == K.PAGED or (attention == K.AUTOSELECTED and target != "tpu")
    return KernelPlan(
        target=target,
        attend=attend,
        attend_short=short or attend,
        short_below=short_below,
        paged="paged" if paged_kernel else "paged_reference",
        dot="cpu" if target == "cpu" else "xla",
    )
