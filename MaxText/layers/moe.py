"""Mixture of experts: top-k routing, dropless grouped matmuls (or capacity dropping), shared experts and the
Switch load-balance loss.

Axis legend: B batch, T length, D model, E routed experts, K experts per token (top-k), F expert hidden size,
G expert groups, C capacity (slots per expert), N = B x T tokens, A = N x K assignments.

Routing (per token, float32): scores = softmax(logits) or sigmoid(logits). Experts are *chosen* on
scores + score-correction bias (when enabled; the bias never weights an output), restricted to the best
`topk_group` of `n_group` equal groups (a group's score is its best expert, or its two best summed). The
chosen experts' *scores* are the weights, renormalised to sum to one when norm_topk_prob, then multiplied
by routed_scaling_factor.

Execution. Dropless (capacity_factor <= 0): the A assignments are sorted by expert and every expert's
contiguous rows go through its weights with jax.lax.ragged_dot, so no token is dropped and no padding is
computed. Capacity (capacity_factor > 0): each expert takes at most C = ceil(A / E x capacity_factor)
assignments into an [E, C, D] buffer; first choices of all tokens come before second choices (GShard
priority), and within one choice rank earlier tokens win. Dropped assignments contribute zero.

Parameters (under the block's `mlp`): gate/kernel [D, E], score_correction_bias [E] (optional, float32),
wi_0, wi_1 [E, D, F], wo [E, F, D] (logical axis `exp` on E), shared_experts/{wi_0,wi_1,wo} (an MlpBlock of
num_shared_experts x F, when num_shared_experts > 0).

The load-balance loss (Switch Transformer, eq. 4) is E x sum_e f_e x P_e, with f_e the share of the A
assignments that chose expert e and P_e the mean routing probability of e, both over non-padding tokens.
It is 1 for a perfectly balanced router. Each MoE layer sows it into the `intermediates` collection as
`moe_lb_loss`; training/loss.py averages it over layers and adds it to the training loss.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from MaxText.config import ConfigError
from MaxText.layers.common import constrain, param_with_axes
from MaxText.layers.linears import ACTIVATIONS, DenseGeneral, MlpBlock
from MaxText.layers.lora import EXPERTS, LoraSpec, expert_adapters
from MaxText.layers.quantizations import QuantConfig, quantized_dot

LB_LOSS_NAME = "moe_lb_loss"
EXPERT_AXIS = "expert"


@dataclasses.dataclass(frozen=True)
class RoutingConfig:
    """How tokens choose experts (see the module docstring)."""

    num_experts: int
    top_k: int
    score_func: str = "softmax"  # softmax | sigmoid
    norm_topk_prob: bool = False
    n_group: int = 1
    topk_group: int = 1
    group_score: str = "max"  # max | top2_sum
    routed_scaling_factor: float = 1.0


def route(logits, rc: RoutingConfig, correction_bias=None):
    """logits [N, E] -> (weights [N, K] float32, experts [N, K] int32, scores [N, E] float32)."""
    logits = logits.astype(jnp.float32)
    scores = jax.nn.softmax(logits, axis=-1) if rc.score_func == "softmax" else jax.nn.sigmoid(logits)
    choice = scores if correction_bias is None else scores + correction_bias.astype(jnp.float32)
    if rc.n_group > 1:
        n, e = choice.shape
        grouped = choice.reshape(n, rc.n_group, e // rc.n_group)
        if rc.group_score == "max":
            group_scores = grouped.max(axis=-1)
        else:
            group_scores = jax.lax.top_k(grouped, 2)[0].sum(axis=-1)
        _, best_groups = jax.lax.top_k(group_scores, rc.topk_group)
        keep = jnp.zeros((n, rc.n_group), bool).at[jnp.arange(n)[:, None], best_groups].set(True)
        keep = jnp.repeat(keep, e // rc.n_group, axis=-1)
        choice = jnp.where(keep, choice, -jnp.inf)
    _, experts = jax.lax.top_k(jax.lax.stop_gradient(choice), rc.top_k)
    weights = jnp.take_along_axis(scores, experts, axis=-1)
    if rc.norm_topk_prob:
        weights = weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)
    return weights * rc.routed_scaling_factor, experts.astype(jnp.int32), scores


def load_balance_loss(scores, experts, token_mask, score_func: str):
    """Switch load-balance loss over the tokens where token_mask [N] is true (see the module docstring)."""
    num_experts = scores.shape[-1]
    mask = token_mask.astype(jnp.float32)
    n_tokens = jnp.maximum(mask.sum(), 1.0)
    probs = scores if score_func == "softmax" else scores / scores.sum(axis=-1, keepdims=True)
    counts = (
        jnp.zeros((num_experts,), jnp.float32).at[experts].add(jnp.broadcast_to(mask[:, None], experts.shape))
    )
    fraction = counts / (n_tokens * experts.shape[-1])
    mean_prob = (probs * mask[:, None]).sum(axis=0) / n_tokens
    return num_experts * jnp.sum(jax.lax.stop_gradient(fraction) * mean_prob)


def _expert_mlp(x, wi, wo, activations, matmul):
    """Gated expert MLP on rows already grouped by expert: matmul(rows, w) applies each row's expert."""
    hidden = None
    for w, act in zip(wi, activations):
        h = ACTIVATIONS[act](checkpoint_name(matmul(x, w), "mlpwi"))
        hidden = h if hidden is None else hidden * h
    return checkpoint_name(matmul(hidden, wo), "mlpwo")


def dropless_experts(x, weights, experts, wi, wo, activations, precision=None, quant=QuantConfig()):
    """sum_k weights[n, k] x expert_{experts[n, k]}(x[n]) with ragged_dot over expert-sorted rows.

    x [N, D]; weights, experts [N, K]; wi: one [E, D, F] per activation; wo [E, F, D] -> [N, D].
    Each matmul is quantized as `quant` says (weights per expert and output channel).
    """
    n, k = experts.shape
    num_experts = wo.shape[0]
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)  # assignment a = token * K + choice
    group_sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    rows = x[order // k]

    def dot(lhs, w, sizes, preferred_element_type):
        w = w if preferred_element_type else w.astype(lhs.dtype)
        return jax.lax.ragged_dot(lhs, w, sizes, precision, preferred_element_type)

    def matmul(lhs, w):
        return quantized_dot(quant, dot, lhs, w, (1,), (1,), aux=group_sizes)

    out = _expert_mlp(rows, wi, wo, activations, matmul)
    out = out[jnp.argsort(order)].reshape(n, k, -1)  # back to assignment order: a gather, not a scatter
    return jnp.einsum("nkd,nk->nd", out, weights.astype(out.dtype))


def capacity(num_assignments: int, num_experts: int, capacity_factor: float) -> int:
    """Slots per expert: ceil(A / E x capacity_factor), at least 1."""
    return max(1, math.ceil(num_assignments / num_experts * capacity_factor))


def _dispatch(x, experts, num_experts: int, c: int):
    """Choice-major slotting into an [E, C, D] buffer: every token's first choice before any second choice,
    earlier tokens first within a choice. Returns (buffer, dest [K N] flat slot or E C = dropped, kept [K N]).
    """
    n, k = experts.shape
    flat = experts.T.reshape(-1)  # choice-major: every token's first choice before any second choice
    onehot = jax.nn.one_hot(flat, num_experts, dtype=jnp.int32)
    slot = (jnp.cumsum(onehot, axis=0) * onehot).sum(axis=-1) - 1  # position within its expert
    kept = slot < c
    dest = jnp.where(kept, flat * c + slot, num_experts * c)  # out of range = dropped
    token = jnp.tile(jnp.arange(n), k)
    buf = jnp.zeros((num_experts * c, x.shape[-1]), x.dtype).at[dest].set(x[token], mode="drop")
    return buf.reshape(num_experts, c, -1), dest, kept


def _combine(out, dest, kept, weights):
    """Expert outputs [E, C, D] back to tokens: sum_k weights[n, k] x (slot of assignment (n, k)) -> [N, D]."""
    e, c, d = out.shape
    n, k = weights.shape
    out = out.reshape(e * c, d)
    out = jnp.where(kept[:, None], out[jnp.minimum(dest, e * c - 1)], 0.0)
    out = out.reshape(k, n, d).transpose(1, 0, 2)
    return jnp.einsum("nkd,nk->nd", out, weights.astype(out.dtype))


def _slot_matmul(precision, quant: QuantConfig):
    """The [E, C, D] x [E, D, F] expert matmul of the slotted paths, quantized as `quant` says."""

    def dot(lhs, w, _, preferred_element_type):
        w = w if preferred_element_type else w.astype(lhs.dtype)
        return jnp.einsum(
            "ecd,edf->ecf", lhs, w, precision=precision, preferred_element_type=preferred_element_type
        )

    def matmul(lhs, w):
        return quantized_dot(quant, dot, lhs, w, (2,), (1,))

    return matmul


def capacity_experts(
    x, weights, experts, wi, wo, activations, capacity_factor, precision=None, quant=QuantConfig()
):
    """Like dropless_experts, but each expert takes at most `capacity` assignments (choice-major priority);
    the others are dropped (contribute zero). Same shapes as dropless_experts."""
    n, k = experts.shape
    num_experts = wo.shape[0]
    buf, dest, kept = _dispatch(x, experts, num_experts, capacity(n * k, num_experts, capacity_factor))
    out = _expert_mlp(buf, wi, wo, activations, _slot_matmul(precision, quant))
    return _combine(out, dest, kept, weights)


def check_expert_parallelism(num_experts: int, shards: int) -> None:
    """Raises ConfigError unless the routed experts split evenly over the `expert` axis."""
    if shards > 1 and num_experts % shards:
        raise ConfigError(
            f"num_experts={num_experts}: the expert axis (ici_expert_parallelism x dcn_expert_parallelism = "
            f"{shards}) must divide the routed experts"
        )


def expert_shards() -> int:
    """Size of the `expert` axis of the current mesh (1 outside a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty or EXPERT_AXIS not in mesh.axis_names else mesh.shape[EXPERT_AXIS]


def _axes(part) -> tuple:
    return () if part is None else (part if isinstance(part, tuple) else (part,))


def _expert_spec(names) -> P:
    """An expert weight's spec: E over `expert`, its other dims as the rules say (all-gathered inside)."""
    spec = nn.logical_to_mesh_axes(names)
    rest = [tuple(a for a in _axes(part) if a != EXPERT_AXIS) or None for part in spec[1:]]
    return P(EXPERT_AXIS, *rest)


def _gather(w, spec):
    """All-gathers every dim of a local weight shard except the expert dim."""
    for dim, part in enumerate(spec):
        if dim and part is not None:
            w = jax.lax.all_gather(w, part, axis=dim, tiled=True, to="invarying")
    return w


def expert_parallel_experts(
    x, weights, experts, wi, wo, activations, capacity_factor, precision=None, quant=QuantConfig()
):
    """Experts sharded over the `expert` mesh axis; tokens travel to them and back with all-to-all (GShard).

    x [B, T, D]; weights, experts [B, T, K]; wi: one [E, D, F] per activation; wo [E, F, D] -> [B, T, D], or
    None when the tokens are not split over `expert` or do not shard evenly (the caller then runs the
    single-program path, which GSPMD partitions correctly, only less efficiently).

    Each device slots its own tokens into an [E, C, D] buffer (_dispatch), sends expert e's rows to the device
    holding e, runs its E / X local experts on [E / X, X C, D] rows and sends the results back. Capacity is
    per device: C = ceil(N_local K / E x capacity_factor); dropless (capacity_factor <= 0) takes C = N_local,
    which no expert can exceed (top-k experts are distinct), at the price of computing E / K times the routed
    rows, mostly padding.
    """
    mesh = jax.sharding.get_abstract_mesh()
    spec = nn.logical_to_mesh_axes(("activation_batch", "activation_length"))
    token_spec = P(spec[0], spec[1], None)
    b, t, _ = x.shape
    shards = [math.prod(mesh.shape[a] for a in _axes(part)) for part in spec]
    if EXPERT_AXIS not in _axes(spec[0]) + _axes(spec[1]) or b % shards[0] or t % shards[1]:
        return None
    wi_specs = [_expert_spec(("exp", "embed", "mlp")) for _ in wi]
    wo_spec = _expert_spec(("exp", "mlp", "embed"))
    num_experts = wo.shape[0]

    def local(x, weights, experts, wi, wo):
        wi = [_gather(w, sp) for w, sp in zip(wi, wi_specs)]
        wo = _gather(wo, wo_spec)
        lb, lt, d = x.shape
        n, k = lb * lt, experts.shape[-1]
        c = n if capacity_factor <= 0 else capacity(n * k, num_experts, capacity_factor)
        buf, dest, kept = _dispatch(x.reshape(n, d), experts.reshape(n, k), num_experts, c)
        buf = jax.lax.all_to_all(buf, EXPERT_AXIS, 0, 1, tiled=True)  # [E / X, X C, D]: this device's experts
        out = _expert_mlp(buf, wi, wo, activations, _slot_matmul(precision, quant))
        out = jax.lax.all_to_all(out, EXPERT_AXIS, 1, 0, tiled=True)  # [E, C, D]: back to the token owners
        return _combine(out, dest, kept, weights.reshape(n, k)).reshape(lb, lt, d)

    return jax.shard_map(
        local,
        in_specs=(token_spec, token_spec, token_spec, wi_specs, wo_spec),
        out_specs=token_spec,
    )(x, weights, experts, wi, wo)


class MoeBlock(nn.Module):
    """Routed experts (+ shared experts). x [B, T, D], token_mask [B, T] (false = padding) -> [B, T, D]."""

    routing: RoutingConfig
    expert_dim: int
    activations: tuple = ("silu", "linear")
    num_shared_experts: int = 0
    score_correction_bias: bool = False
    capacity_factor: float = 0.0
    dtype: jnp.dtype = jnp.float32
    weight_dtype: jnp.dtype = jnp.float32
    precision: jax.lax.Precision = jax.lax.Precision.DEFAULT
    quant: QuantConfig = QuantConfig()
    lora: LoraSpec = LoraSpec()  # adapters of the routed experts ("experts") and of the shared experts
    dot: str = "cpu"  # DenseGeneral.dot of the gate and the shared experts

    def _expert_weights(self, d: int):
        e, f = self.routing.num_experts, self.expert_dim
        init = nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=1, out_axis=2, batch_axis=(0,)
        )
        names = ["wi"] if len(self.activations) == 1 else [f"wi_{i}" for i in range(len(self.activations))]
        wi = [
            param_with_axes(self, name, init, (e, d, f), self.weight_dtype, ("exp", "embed", "mlp"))
            for name in names
        ]
        wo = param_with_axes(self, "wo", init, (e, f, d), self.weight_dtype, ("exp", "mlp", "embed"))
        return wi, wo

    def _experts(self, tokens, weights, experts, wi, wo, shape):
        """tokens [N, D] through their routed experts -> [N, D]: expert-parallel when the mesh has an expert
        axis, else the dropless or capacity path on one program."""
        b, t, d = shape
        # Stored (checkpoint_is_quantized) int8 experts are not written yet: those matmuls quantize on the fly.
        quant = QuantConfig(self.quant.mode)
        if expert_shards() > 1:
            k = self.routing.top_k
            out = expert_parallel_experts(
                tokens.reshape(shape), weights.reshape(b, t, k), experts.reshape(b, t, k), wi, wo,
                self.activations, self.capacity_factor, self.precision, quant,
            )  # fmt: skip
            if out is not None:
                return out.reshape(b * t, d)
        if self.capacity_factor > 0:
            return capacity_experts(
                tokens,
                weights,
                experts,
                wi,
                wo,
                self.activations,
                self.capacity_factor,
                self.precision,
                quant,
            )
        return dropless_experts(tokens, weights, experts, wi, wo, self.activations, self.precision, quant)

    @nn.compact
    def __call__(self, x, token_mask):
        b, t, d = x.shape
        rc = self.routing
        gate = DenseGeneral(
            rc.num_experts,
            kernel_axes=("embed", None),
            dtype=jnp.float32,
            weight_dtype=self.weight_dtype,
            precision=self.precision,
            dot=self.dot,
            name="gate",
        )
        tokens = x.reshape(b * t, d)
        logits = gate(tokens.astype(jnp.float32))
        bias = None
        if self.score_correction_bias:
            # Set by the auxiliary-loss-free balancing update outside the gradient, never trained by it.
            bias = jax.lax.stop_gradient(
                param_with_axes(
                    self,
                    "score_correction_bias",
                    nn.initializers.zeros,
                    (rc.num_experts,),
                    jnp.float32,
                    (None,),
                )
            )
        weights, experts, scores = route(logits, rc, bias)
        mask = token_mask.reshape(-1)
        self.sow("intermediates", LB_LOSS_NAME, load_balance_loss(scores, experts, mask, rc.score_func))
        wi, wo = self._expert_weights(d)
        if self.lora.adapts(EXPERTS):
            wi, wo = expert_adapters(self, wi, wo, self.lora)
        tokens = tokens.astype(self.dtype)
        out = self._experts(tokens, weights, experts, wi, wo, (b, t, d))
        out = constrain(
            out.reshape(b, t, d).astype(self.dtype),
            ("activation_batch", "activation_length", "activation_embed"),
        )
        if self.num_shared_experts > 0:
            out = out + MlpBlock(
                mlp_dim=self.num_shared_experts * self.expert_dim,
                activations=self.activations,
                dtype=self.dtype,
                weight_dtype=self.weight_dtype,
                precision=self.precision,
                quant=self.quant,
                dot=self.dot,
                lora=self.lora,
                name="shared_experts",
            )(x)
        return out
