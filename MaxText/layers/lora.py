"""LoRA adapters on dense projections: y = W x + (alpha / r) * B A dropout(x), never merged into W.

Axis legend: r adapter rank; `in` and `out` the projection's input and output axes (e.g. query: in = [D],
out = [N, H]; out projection: in = [N, H], out = [D]).

A projection named in `LoraSpec.targets` (our module names, from the PEFT names in lora_target_modules)
holds, beside its kernel [*in, *out], `lora_a` [*in, r] and `lora_b` [r, *out], named with the kernel's
logical axes (the rank axis unsharded) so tensor and fsdp sharding split them as they split the kernel.
A starts like PEFT's (Kaiming-uniform) and B at zero, so an untrained adapter changes nothing. The base
kernel may be int8 (QLoRA: quantization=int8w with stored int8 weights); the adapters stay float32.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from MaxText.config.choices import LoraTarget
from MaxText.layers.common import param_with_axes

PARAM_NAMES = ("lora_a", "lora_b", "wi_lora_a", "wi_lora_b", "wo_lora_a", "wo_lora_b")
# Our name for the routed experts' weights as a target (PEFT reaches them through target_parameters).
EXPERTS = "experts"
# PEFT's module names (Hugging Face's Llama-style names) -> the names of our projections they adapt.
PEFT_MODULES = {
    LoraTarget.Q_PROJ: ("query",),
    LoraTarget.K_PROJ: ("key",),
    LoraTarget.V_PROJ: ("value",),
    LoraTarget.O_PROJ: ("out",),
    LoraTarget.GATE_PROJ: ("wi_0",),
    LoraTarget.UP_PROJ: ("wi_1", "wi"),
    LoraTarget.DOWN_PROJ: ("wo",),
    LoraTarget.Q_A_PROJ: ("wq_a",),
    LoraTarget.Q_B_PROJ: ("wq_b",),
    LoraTarget.KV_A_PROJ_WITH_MQA: ("wkv_a",),
    LoraTarget.KV_B_PROJ: ("wkv_b",),
    LoraTarget.EXPERTS: (EXPERTS,),
}


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """rank 0 = no adapters. targets: our module names that get them (PEFT_MODULES values)."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple = ()
    # Serving several adapters at once: each batch row b brings its own, lora_a [*in, B, r] and lora_b
    # [B, r, *out] (gathered per row from the stacked adapters by the engine, their scales folded into B).
    rows: bool = False

    @property
    def scale(self) -> float:
        return 1.0 if self.rows else self.alpha / self.rank

    def adapts(self, module_name: str) -> bool:
        return self.rank > 0 and module_name in self.targets


def lora_spec(rank: int, alpha: float, dropout: float, target_modules, rows: bool = False) -> LoraSpec:
    """The spec of a model config's lora_* fields (names checked by config validation)."""
    if rank <= 0:
        return LoraSpec()
    targets = tuple(sorted({ours for name in target_modules for ours in PEFT_MODULES.get(name, ())}))
    return LoraSpec(rank=rank, alpha=float(alpha), dropout=float(dropout), targets=targets, rows=rows)


def _kaiming_uniform_in(num_in: int):
    """PEFT's A init (torch's kaiming_uniform_ with a = sqrt(5)): U(-b, b), b = 1 / sqrt(fan_in)."""

    def init(key, shape, dtype=jnp.float32):
        fan_in = math.prod(shape[:num_in])
        bound = 1.0 / math.sqrt(fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def lora_delta(module: nn.Module, x, spec: LoraSpec, num_in: int, features: tuple, kernel_axes: tuple, dtype):
    """(alpha / r) * B A dropout(x) for x [*batch, *in] (in = the trailing num_in axes) -> [*batch, *out].

    Creates `lora_a` and `lora_b` in `module` (float32). Dropout draws from the "dropout" rng when the
    module is applied with one (training), and is off otherwise.
    """
    in_shape = x.shape[x.ndim - num_in :]
    in_axes = tuple(kernel_axes[:num_in]) if kernel_axes else ()
    out_axes = tuple(kernel_axes[num_in:]) if kernel_axes else ()
    rows = (x.shape[0],) if spec.rows else ()
    a = param_with_axes(
        module, "lora_a", _kaiming_uniform_in(num_in), in_shape + rows + (spec.rank,), jnp.float32,
        (in_axes + (None,) * (1 + len(rows))) if kernel_axes else (),
    )  # fmt: skip
    b = param_with_axes(
        module, "lora_b", nn.initializers.zeros, rows + (spec.rank,) + tuple(features), jnp.float32,
        ((None,) * (1 + len(rows)) + out_axes) if kernel_axes else (),
    )  # fmt: skip
    if spec.dropout > 0.0:
        x = nn.Dropout(spec.dropout)(x, deterministic=not module.has_rng("dropout"))
    a, b = a.astype(dtype), b.astype(dtype)
    batch = x.ndim - num_in
    if spec.rows:  # row n of x (its first axis) through adapter row n
        letters = "abcdefghijklm"
        xs, ins, outs = letters[1:batch], letters[batch : batch + num_in], "uvwxyz"[: len(features)]
        h = jnp.einsum(f"n{xs}{ins},{ins}nr->n{xs}r", x, a)
        y = jnp.einsum(f"n{xs}r,nr{outs}->n{xs}{outs}", h, b)
    else:
        h = jax.lax.dot_general(x, a, ((tuple(range(batch, x.ndim)), tuple(range(num_in))), ((), ())))
        y = jax.lax.dot_general(h, b, (((h.ndim - 1,), (0,)), ((), ())))
    return (spec.scale * y).astype(dtype)


def expert_adapters(module: nn.Module, wi: list, wo, spec: LoraSpec):
    """The routed experts' weights with their adapters added: wi (one [E, D, F] per activation), wo [E, F, D].

    The adapters take the shape PEFT gives transformers' fused expert tensors (gate_up_proj [E, 2F, D],
    down_proj [E, D, F]): one A per expert shared by the input projections, wi_lora_a [E, D, r], and
    wi_lora_b [E, r, n F] whose n column blocks belong to wi_0, wi_1, ...; wo_lora_a [E, F, r] and wo_lora_b
    [E, r, D]. The effective weights are W + (alpha / r) A B, as PEFT's parametrization forms them (no
    dropout: PEFT has none for expert tensors either).
    """
    e, d, f = wi[0].shape
    r = spec.rank
    a_in = param_with_axes(
        module, "wi_lora_a", _kaiming_uniform_in(2), (e, d, r), jnp.float32, ("exp", "embed", None)
    )
    b_in = param_with_axes(
        module, "wi_lora_b", nn.initializers.zeros, (e, r, len(wi) * f), jnp.float32, ("exp", None, "mlp")
    )
    delta = spec.scale * jnp.einsum("edr,erf->edf", a_in, b_in)
    wi = [(w.astype(jnp.float32) + delta[..., i * f : (i + 1) * f]).astype(w.dtype) for i, w in enumerate(wi)]
    a_out = param_with_axes(
        module, "wo_lora_a", _kaiming_uniform_in(2), (e, f, r), jnp.float32, ("exp", "mlp", None)
    )
    b_out = param_with_axes(
        module, "wo_lora_b", nn.initializers.zeros, (e, r, d), jnp.float32, ("exp", None, "embed")
    )
    wo = (wo.astype(jnp.float32) + spec.scale * jnp.einsum("efr,erd->efd", a_out, b_out)).astype(wo.dtype)
    return wi, wo


def is_adapter(path: str) -> bool:
    """Whether a parameter path (decoder/layers/self_attention/query/lora_a) is an adapter."""
    return path.rsplit("/", maxsplit=1)[-1] in PARAM_NAMES
