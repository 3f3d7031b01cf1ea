"""The whole model, assembled from the family's stacks: token embedding -> stacks of (scanned) blocks -> final norm -> tied or untied logits.

Parameter tree (scan_layers=true, param_scan_axis=1; docs/checkpoints.md has the full layout):
  token_embedder/embedding                     [V, D]
  decoder/position_embedder/embedding          [P, D]   (only when trainable_position_size P > 0)
  decoder/<stack>/<block params>               layer axis inserted at param_scan_axis, logical name "layers"
  decoder/decoder_norm/scale                   [D]
  decoder/logits_dense/kernel                  [D, V]   (only when logits_via_embedding is false)
With scan_layers=false each layer is its own subtree `decoder/<stack>_<i>/...`.

A stack's scanned unit is one layer or a group of layers (Gemma 2/3: local/global groups; registry.Stack).
The KV cache is a dict {stack name: per-unit cache stacked on a leading unit axis}, the same with or
without scan, so decode code never depends on how the layers were built.

Model-level numerics from the config: token embeddings x sqrt(D) in the activation dtype
(scale_embeddings_by_sqrt_dim), learned positions added to them, the final norm's type and offset, and the
final logit soft cap cap * tanh(logits / cap).
"""

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from MaxText import kernels
from MaxText.config import ConfigError
from MaxText.config.derived import ModelConfig
from MaxText.layers.common import constrain, dtype_of, precision_of
from MaxText.layers.embeddings import Embed
from MaxText.layers.linears import DenseGeneral
from MaxText.layers.quantizations import quant_config
from MaxText.layers import remat
from MaxText.layers.normalizations import make_norm
from MaxText.models import registry
from MaxText.models.transformer_layer import kernel_plan
from MaxText.parallel import pipeline


def remat_policy(name: str, custom: tuple = ()):
    """The jax.checkpoint policy for a remat_policy name ("none" means no rematerialisation at all); custom
    takes (tensor, remat|device|offload) pairs. layers/remat.py lists the names."""
    return remat.checkpoint_policy(name, custom)


class Decoder(nn.Module):
    """Blocks, final norm and output projection. Shared embedding is passed in for tied logits."""

    config: ModelConfig
    shared_embedding: nn.Module

    def _run_pipeline(self, stack, x, positions, segment_ids, mode, cache, stages):
        """The stack through `stages` pipeline stages (parallel/pipeline.py), on the params nn.scan made."""
        cfg = self.config
        if mode != "train" or cache is not None:
            raise ConfigError(
                f"ici_pipeline_parallelism x dcn_pipeline_parallelism = {stages}: pipeline parallelism is for "
                "training; decode and serve need both at 1"
            )
        block = stack.block(cfg)

        def layer_fn(p, h, pos, seg):
            return block.apply({"params": p}, h, pos, seg, "train", None)[0]

        stacked = nn.meta.unbox(self.variables["params"][stack.name])
        params = pipeline.stage_params(stacked, cfg.param_scan_axis, stages)
        policy = None if cfg.remat_policy == "none" else remat_policy(cfg.remat_policy, cfg.remat_custom)
        microbatches = pipeline.num_microbatches(cfg.num_pipeline_microbatches, stages)
        return pipeline.run(layer_fn, params, x, positions, segment_ids, microbatches, policy), None

    def _run_stack(self, stack, x, positions, segment_ids, mode, cache):
        cfg = self.config
        stages = pipeline.num_stages()
        # Initialisation always goes through nn.scan, so the pipeline reads the very same parameter tree.
        if stages > 1 and not self.is_initializing():
            return self._run_pipeline(stack, x, positions, segment_ids, mode, cache, stages)
        block = stack.block
        if cfg.remat_policy != "none":
            # Arg 4 (mode) is a Python string and must stay static under remat.
            block = nn.remat(
                block,
                policy=remat_policy(cfg.remat_policy, cfg.remat_custom),
                prevent_cse=not cfg.scan_layers,
                static_argnums=(4,),
            )
        if cfg.scan_layers:
            scanned = nn.scan(
                block,
                variable_axes={"params": cfg.param_scan_axis, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0),
                length=stack.length,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            return scanned(cfg, name=stack.name)(x, positions, segment_ids, mode, cache)
        # A cache given per layer (a list, kv_cache.per_layer) stays per layer: each layer updates its own
        # (donated) arrays in place, where slicing a stacked cache and stacking it back copies all of it.
        per_layer = isinstance(cache, list)
        new_caches = []
        for i in range(stack.length):
            if cache is None:
                layer_cache = None
            elif per_layer:
                layer_cache = cache[i]
            else:
                layer_cache = jax.tree.map(lambda c, i=i: c[i], cache)
            x, c = block(cfg, name=f"{stack.name}_{i}")(x, positions, segment_ids, mode, layer_cache)
            new_caches.append(c)
        if per_layer:
            return x, new_caches
        new_cache = (
            None if cache is None else jax.tree.map(lambda *cs: jnp.stack(cs), new_caches[0], *new_caches[1:])
        )
        return x, new_cache

    @nn.compact
    def __call__(self, ids, positions, segment_ids, mode: str, cache: Optional[dict] = None):
        """ids/positions/segment_ids [B, T] -> (logits [B, T, V] float32 or dtype, new cache or None)."""
        cfg = self.config
        dtype, wdtype = dtype_of(cfg.dtype), dtype_of(cfg.weight_dtype)
        x = self.shared_embedding(ids)
        if cfg.scale_embeddings_by_sqrt_dim:
            x = x * jnp.asarray(math.sqrt(cfg.emb_dim), x.dtype)
        if cfg.trainable_position_size > 0:
            x = x + Embed(
                num_embeddings=cfg.trainable_position_size,
                features=cfg.emb_dim,
                dtype=dtype,
                weight_dtype=wdtype,
                name="position_embedder",
            )(positions)
        x = constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        new_cache = {} if cache is not None else None
        for stack in registry.stacks(cfg):
            stack_cache = None if cache is None else cache[stack.name]
            x, c = self._run_stack(stack, x, positions, segment_ids, mode, stack_cache)
            if cache is not None:
                new_cache[stack.name] = c
        x = make_norm(
            cfg.normalization_type,
            "decoder_norm",
            epsilon=cfg.normalization_layer_epsilon,
            scale_offset=cfg.normalization_scale_offset,
            dtype=dtype,
            weight_dtype=wdtype,
        )(x)
        logits_dtype = jnp.float32 if cfg.logits_dot_in_fp32 else dtype
        if cfg.logits_via_embedding:
            logits = self.shared_embedding.attend(x, dtype=logits_dtype)
        else:
            logits = DenseGeneral(
                cfg.vocab_size,
                kernel_axes=("embed", "vocab"),
                dtype=logits_dtype,
                weight_dtype=wdtype,
                precision=precision_of(cfg.matmul_precision),
                quant=quant_config(cfg),
                dot=kernel_plan(cfg).dot,
                name="logits_dense",
            )(x)
        if cfg.final_logits_soft_cap > 0:
            logits = cfg.final_logits_soft_cap * jnp.tanh(logits / cfg.final_logits_soft_cap)
        logits = constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))
        return logits, new_cache


class Transformer(nn.Module):
    """The whole model: `token_embedder` and `decoder`. Call with (ids, positions, segment_ids, mode, cache)."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.token_embedder = Embed(
            num_embeddings=cfg.vocab_size,
            features=cfg.emb_dim,
            dtype=dtype_of(cfg.dtype),
            weight_dtype=dtype_of(cfg.weight_dtype),
            precision=precision_of(cfg.matmul_precision),
            dot=kernel_plan(cfg).dot,
        )
        self.decoder = Decoder(cfg, self.token_embedder)

    def __call__(self, ids, positions, segment_ids, mode: str = "train", cache: Optional[dict] = None):
        return self.decoder(ids, positions, segment_ids, mode, cache)


def unstack_layers(params: dict, cfg: ModelConfig) -> dict:
    """Scanned params -> the scan_layers=false layout (`<stack>_<i>` subtrees). Pure reshuffle, bit-exact."""
    decoder = dict(params["decoder"])
    for stack in registry.stacks(cfg):
        stacked = decoder.pop(stack.name)
        for i in range(stack.length):
            decoder[f"{stack.name}_{i}"] = jax.tree.map(
                lambda x, i=i: jnp.take(x, i, axis=cfg.param_scan_axis), stacked
            )
    return {**params, "decoder": decoder}


def stack_layers(params: dict, cfg: ModelConfig) -> dict:
    """The scan_layers=false layout -> scanned params (inverse of unstack_layers)."""
    decoder = dict(params["decoder"])
    for stack in registry.stacks(cfg):
        layers = [decoder.pop(f"{stack.name}_{i}") for i in range(stack.length)]
        decoder[stack.name] = jax.tree.map(lambda *xs: jnp.stack(xs, axis=cfg.param_scan_axis), *layers)
    return {**params, "decoder": decoder}


def make_model(mcfg: ModelConfig, target: Optional[str] = None) -> Transformer:
    """The model for `target` (cpu | gpu | tpu: the platform of the devices it is compiled for; default this
    process's default backend). The kernel plan is decided here, once (kernels/plan.py); a config that
    already carries one keeps it."""
    if mcfg.kernel_plan is None or (target is not None and mcfg.kernel_plan.target != target):
        mcfg = mcfg.replace(kernel_plan=kernels.plan_for(mcfg.attention, target or kernels.platform_of()))
    return Transformer(mcfg)


def dummy_inputs(batch: int, length: int):
    """(ids, positions, segment_ids) [batch, length] of zeros, for initialisation and shape tracing."""
    ids = jnp.zeros((batch, length), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return ids, positions, jnp.ones((batch, length), jnp.int32)


def init_params_boxed(model: Transformer, rng, length: int = 8):
    """Parameters with their logical-axis boxes (LogicallyPartitioned), for sharding specs."""
    return model.init({"params": rng}, *dummy_inputs(1, length), "train")["params"]
