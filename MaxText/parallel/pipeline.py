"""Pipeline parallelism over the `stage` mesh axis: a GPipe schedule of microbatches through layer stages.

Axis legend: S stages (size of the `stage` mesh axis), M microbatches, L layers of a stack, P = L / S layers
per stage, B batch, b = B / M microbatch rows, T length, D model.

Layout. The parameters keep the ordinary scanned layout (layer axis at param_scan_axis, logical name
`layers`, which logical_axis_rules map to `stage`), so a checkpoint saved with a pipeline restores without
one and vice versa. Stage s holds layers [s P, (s + 1) P): the layer axis reshaped to [S, P] keeps its
`stage` sharding on S, so no weight moves between devices.

Schedule (vmapped stages with a shift, the formulation XLA's SPMD partitioner turns into a collective
permute). The state [S, b, T, D] holds one microbatch per stage. At iteration t = 0 .. M + S - 2 stage 0
takes microbatch t, every stage s > 0 takes what stage s - 1 produced at t - 1 (jnp.roll along the
stage-sharded axis), all stages run their P layers at once (jax.vmap with spmd_axis_name="stage"), and the
last stage's output is microbatch t - S + 1. Bubbles: while a stage has no microbatch (t < s or
t - s >= M) it computes on zeros or on stale rows; those results are never read, so they carry no gradient.
Microbatch i takes rows i, i + M, i + 2M, ... so each one stays spread over the data shards.
"""

import jax
import jax.numpy as jnp

from MaxText.config import ConfigError
from MaxText.parallel.logical import constrain

STAGE_AXIS = "stage"
# The state's leading axis is the stage; "layers" is the logical name that the rules map to `stage`.
_STATE_AXES = ("layers", "activation_batch", "activation_length", "activation_embed")


def num_stages() -> int:
    """Size of the `stage` axis of the current mesh (1 outside a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or STAGE_AXIS not in mesh.axis_names:
        return 1
    return mesh.shape[STAGE_AXIS]


def num_microbatches(requested: int, stages: int) -> int:
    """num_pipeline_microbatches, where -1 means one microbatch per stage."""
    return stages if requested == -1 else requested


def check(mcfg, stack_lengths, stages: int, batch_rows: int, data_shards: int, microbatches: int) -> None:
    """Raises ConfigError unless the model and batch can run through `stages` pipeline stages.

    stack_lengths: {stack name: scanned units}; batch_rows: rows of one forward pass (the global batch over
    gradient_accumulation_steps); data_shards: shards of the batch axis.
    """
    if microbatches < 1:
        raise ConfigError(
            f"num_pipeline_microbatches={microbatches}: expected -1 (one microbatch per stage) or a value >= 1"
        )
    if stages == 1:
        return
    where = f"{stages} pipeline stages (ici_pipeline_parallelism x dcn_pipeline_parallelism)"
    if mcfg.num_experts > 0:
        raise ConfigError(
            f"decoder_block={mcfg.decoder_block}: {where} support dense blocks only; use "
            "ici_expert_parallelism for mixture-of-experts models"
        )
    if mcfg.dropout_rate > 0:
        raise ConfigError(f"dropout_rate={mcfg.dropout_rate}: {where} need dropout_rate=0")
    if not mcfg.scan_layers:
        raise ConfigError(f"scan_layers=false: {where} split the scanned layer stack; set scan_layers=true")
    for name, length in stack_lengths.items():
        if length % stages:
            raise ConfigError(
                f"base_num_decoder_layers={mcfg.num_decoder_layers}: stack {name!r} has {length} scanned units, "
                f"which {where} do not divide"
            )
    if batch_rows % microbatches or (batch_rows // microbatches) % data_shards:
        raise ConfigError(
            f"num_pipeline_microbatches={microbatches}: the {batch_rows} rows of a forward pass (global batch / "
            f"gradient_accumulation_steps) must split into that many microbatches, each divisible by the "
            f"{data_shards} data shards"
        )


def stage_params(stacked, scan_axis: int, stages: int):
    """Scanned params (layer axis at scan_axis, L long) -> leaves [S, P, ...] (stage s: layers s P .. )."""

    def split(p):
        p = jnp.moveaxis(p, scan_axis, 0)
        return p.reshape((stages, p.shape[0] // stages) + p.shape[1:])

    return jax.tree.map(split, stacked)


def _split_rows(x, m: int):
    """[B, ...] -> [M, B / M, ...]: microbatch i takes rows i, i + M, ..."""
    return x.reshape((x.shape[0] // m, m) + x.shape[1:]).swapaxes(0, 1)


def _merge_rows(x):
    """Inverse of _split_rows."""
    return x.swapaxes(0, 1).reshape((-1,) + x.shape[2:])


def run(layer_fn, params, x, positions, segment_ids, microbatches: int, policy=None):
    """Runs x [B, T, D] through the stacked layers with the GPipe schedule above; returns [B, T, D].

    layer_fn(layer_params, x [b, T, D], positions [b, T], segment_ids [b, T]) -> x applies one layer.
    params: leaves [S, P, ...] (stage_params). policy: a jax.checkpoint policy for each layer, or None.
    """
    stages = jax.tree.leaves(params)[0].shape[0]
    m = microbatches
    xs = _split_rows(x, m)
    pos, seg = _split_rows(positions, m), _split_rows(segment_ids, m)

    def layer(h, p, mb_pos, mb_seg):
        return layer_fn(p, h, mb_pos, mb_seg)

    if policy is not None:
        layer = jax.checkpoint(layer, policy=policy, prevent_cse=False)

    def one_stage(p, h, mb_pos, mb_seg):
        h, _ = jax.lax.scan(lambda c, lp: (layer(c, lp, mb_pos, mb_seg), None), h, p)
        return h

    all_stages = jax.vmap(one_stage, spmd_axis_name=STAGE_AXIS)
    stage_ids = jnp.arange(stages)
    first = (stage_ids == 0)[:, None, None, None]

    def iteration(carry, t):
        state, outputs = carry
        shifted = jnp.roll(state, 1, axis=0)
        state = constrain(jnp.where(first, xs[jnp.minimum(t, m - 1)][None], shifted), _STATE_AXES)
        mb = jnp.clip(t - stage_ids, 0, m - 1)  # the microbatch each stage works on
        state = constrain(all_stages(params, state, pos[mb], seg[mb]), _STATE_AXES)
        # Writes before the first finished microbatch land on slot 0 and are overwritten at t = S - 1.
        outputs = jax.lax.dynamic_update_index_in_dim(outputs, state[-1], jnp.maximum(t - stages + 1, 0), 0)
        return (state, outputs), None

    state = jnp.zeros((stages,) + xs.shape[1:], x.dtype)
    (_, outputs), _ = jax.lax.scan(iteration, (state, jnp.zeros_like(xs)), jnp.arange(m + stages - 1))
    return _merge_rows(outputs)


def bubble_fraction(stages: int, microbatches: int) -> float:
    """Share of stage-iterations that compute nothing useful: (S - 1) / (M + S - 1)."""
    return (stages - 1) / (microbatches + stages - 1) if stages > 1 else 0.0
