"""The config-driven decoder layer and the local/global layer group that the family blocks specialise.

One layer (x [B, T, D] -> [B, T, D]):
    h = attention(pre_attention_norm(x));  x = x + (post_attention_norm(h) if use_post_attn_norm else h)
    h = mlp(pre_mlp_norm(x));              x = x + (post_mlp_norm(h) if use_post_ffw_norm else h)
where the pre norms are the identity when use_pre_norms is false (OLMo 3: x + norm(f(x)) only).
The numerics come from ModelConfig fields (norm type and offset, qk-norm, biases, soft cap, attention scale,
sliding window, local/global RoPE); a family's block class only chooses its parameter names (NORM_NAMES),
whether it uses RoPE (USE_ROPE) and how layers are grouped into scanned units (its `stacks(cfg)`).

A layer is "global" (full causal attention, the global RoPE) or local (sliding_window_size when > 0, and
the local RoPE when local_rope_max_timescale > 0). Llama/Mistral layers are all local in this sense, so a
Mistral window applies to every layer. Gemma 2/3 scan groups of sliding_window_pattern layers whose last one
is global; layers left over after the last full group are local and form their own stack ("tail").
"""

from typing import NamedTuple

import flax.linen as nn

from MaxText.config.derived import ModelConfig
from MaxText.layers.attention import Attention
from MaxText.layers.common import constrain, dtype_of, precision_of
from MaxText.layers.embeddings import RopeConfig, yarn_mscale
from MaxText.layers.linears import MlpBlock
from MaxText.layers.lora import lora_spec
from MaxText.layers.normalizations import make_norm
from MaxText.layers.quantizations import quant_config
from MaxText.models.spec import Stack

# The residual stream between blocks: its length axis is what tensor-sequence parallelism shards.
_ACT = ("activation_batch", "activation_norm_length", "activation_embed")


class NormNames(NamedTuple):
    """Parameter names of a layer's four possible norms (the post norms exist only when enabled)."""

    pre_attention: str
    post_attention: str
    pre_mlp: str
    post_mlp: str


# MaxText's names: Llama calls the pre-MLP norm "post_self_attention_layer_norm".
LLAMA_NORMS = NormNames(
    "pre_self_attention_layer_norm",
    "post_self_attention_norm",
    "post_self_attention_layer_norm",
    "post_ffw_norm",
)
GEMMA_NORMS = NormNames(
    "pre_self_attention_norm", "post_self_attention_norm", "pre_ffw_norm", "post_ffw_norm"
)


def rope_config(cfg: ModelConfig, global_attention: bool = True, head_dim: int = 0) -> RopeConfig:
    """The RoPE of a global layer, or of a local one (unscaled, local base) when local_rope_max_timescale > 0.
    head_dim: the rotated size when it is not cfg.head_dim (MLA's rope part)."""
    head_dim = head_dim or cfg.head_dim
    if not global_attention and cfg.local_rope_max_timescale > 0:
        return RopeConfig(
            head_dim=head_dim, theta=cfg.local_rope_max_timescale, interleaved=cfg.rope_interleave
        )
    return RopeConfig(
        head_dim=head_dim,
        theta=cfg.rope_max_timescale,
        rope_type=cfg.rope_type,
        factor=cfg.rope_scaling_factor,
        low_freq_factor=cfg.rope_low_freq_factor,
        high_freq_factor=cfg.rope_high_freq_factor,
        original_max_position=cfg.rope_original_max_position_embeddings,
        beta_fast=cfg.rope_yarn_beta_fast,
        beta_slow=cfg.rope_yarn_beta_slow,
        attention_factor=yarn_attention_factor(cfg),
        interleaved=cfg.rope_interleave,
    )


def yarn_attention_factor(cfg: ModelConfig) -> float:
    """YaRN's factor on cos/sin: mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both are set,
    else mscale(factor, 1); 1.0 for other rope types."""
    if cfg.rope_type != "yarn":
        return 1.0
    f = cfg.rope_scaling_factor
    if cfg.rope_yarn_mscale and cfg.rope_yarn_mscale_all_dim:
        return yarn_mscale(f, cfg.rope_yarn_mscale) / yarn_mscale(f, cfg.rope_yarn_mscale_all_dim)
    return yarn_mscale(f, 1.0)


def norm(cfg: ModelConfig, name: str) -> nn.Module:
    """A norm of the configured type (rmsnorm/layernorm) and scale offset."""
    return make_norm(
        cfg.normalization_type,
        name,
        epsilon=cfg.normalization_layer_epsilon,
        scale_offset=cfg.normalization_scale_offset,
        dtype=dtype_of(cfg.dtype),
        weight_dtype=dtype_of(cfg.weight_dtype),
    )


def numerics(cfg: ModelConfig) -> dict:
    """The dtype, weight_dtype, precision, quant and lora keyword arguments of a layer, from the config."""
    return dict(
        dtype=dtype_of(cfg.dtype),
        weight_dtype=dtype_of(cfg.weight_dtype),
        precision=precision_of(cfg.matmul_precision),
        quant=quant_config(cfg),
        lora=lora_spec(
            cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules, cfg.lora_rows
        ),
    )


def kernel_plan(cfg: ModelConfig):
    """The model's KernelPlan (kernels/plan.py), which make_model sets once for the target."""
    if cfg.kernel_plan is None:
        raise ValueError(
            "ModelConfig.kernel_plan is unset: build the model with models.transformer.make_model, which "
            "plans the kernels for the target platform"
        )
    return cfg.kernel_plan


def attention_scale(cfg: ModelConfig):
    """query_pre_attn_scalar**-0.5 when set, else None (the layer's default 1/sqrt(head_dim))."""
    return cfg.query_pre_attn_scalar**-0.5 if cfg.query_pre_attn_scalar > 0 else None


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer (see the module docstring). Cache: this layer's K/V cache (inference/kv_cache.py), or None."""

    config: ModelConfig
    global_attention: bool = False
    NORM_NAMES = LLAMA_NORMS
    USE_ROPE = True
    MOE = False  # whether "mlp" is a mixture of experts (parameter counts, FLOPs and mappings read this)

    def _attention(self):
        cfg = self.config
        return Attention(
            num_query_heads=cfg.num_query_heads,
            num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            rope=rope_config(cfg, self.global_attention) if self.USE_ROPE else None,
            plan=kernel_plan(cfg),
            scale=attention_scale(cfg),
            sliding_window=0 if self.global_attention else cfg.sliding_window_size,
            soft_cap=cfg.attn_logits_soft_cap,
            block_size=cfg.flash_block_size,
            use_bias=cfg.use_bias,
            qk_norm=cfg.use_qk_norm,
            qk_norm_epsilon=cfg.normalization_layer_epsilon,
            qk_norm_offset=cfg.normalization_scale_offset,
            qk_norm_across_heads=cfg.qk_norm_across_heads,
            name="self_attention",
            **numerics(cfg),
        )

    @classmethod
    def cache_shapes(cls, cfg: ModelConfig) -> dict:
        """This layer's decode cache: {name: per-token shape} (inference/kv_cache.py adds [B, S] in front)."""
        return {"k": (cfg.num_kv_heads, cfg.head_dim), "v": (cfg.num_kv_heads, cfg.head_dim)}

    def _feed_forward(self, h, segment_ids):
        """The layer's MLP ("mlp"); MoE layers route tokens to experts here instead."""
        del segment_ids
        cfg = self.config
        return MlpBlock(
            mlp_dim=cfg.mlp_dim,
            activations=cfg.mlp_activations,
            use_bias=cfg.use_bias,
            dot=kernel_plan(cfg).dot,
            name="mlp",
            **numerics(cfg),
        )(h)

    @nn.compact
    def __call__(self, x, positions, segment_ids, mode, cache=None):
        cfg = self.config
        names = self.NORM_NAMES
        # Eval applies the model in "train" mode without a dropout rng: no dropout there.
        deterministic = mode != "train" or cfg.dropout_rate == 0.0 or not self.has_rng("dropout")
        x = constrain(x, _ACT)
        h = norm(cfg, names.pre_attention)(x) if cfg.use_pre_norms else x
        h, cache = self._attention()(h, positions, segment_ids, mode, cache)
        if cfg.use_post_attn_norm:
            h = norm(cfg, names.post_attention)(h)
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        h = norm(cfg, names.pre_mlp)(x) if cfg.use_pre_norms else x
        h = self._feed_forward(h, segment_ids)
        if cfg.use_post_ffw_norm:
            h = norm(cfg, names.post_mlp)(h)
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
        return constrain(x, _ACT), cache


def group_sublayers(cfg: ModelConfig) -> tuple:
    """Names of the layers in one local/global group: ("local", "global") for pairs, else
    ("local_0", ..., "local_{P-2}", "global") for P = sliding_window_pattern."""
    p = cfg.sliding_window_pattern
    local = ("local",) if p == 2 else tuple(f"local_{j}" for j in range(p - 1))
    return local + ("global",)


class LocalGlobalGroup(nn.Module):
    """sliding_window_pattern layers as one scanned unit: the local ones, then the global one.

    Parameters live under the sublayer names of group_sublayers; the cache is {sublayer: its K/V cache}.
    Subclasses set LAYER to the family's layer class.
    """

    config: ModelConfig
    LAYER = DecoderLayer

    @nn.compact
    def __call__(self, x, positions, segment_ids, mode, cache=None):
        new_cache = None if cache is None else {}
        for name in group_sublayers(self.config):
            layer = self.LAYER(self.config, global_attention=name == "global", name=name)
            x, c = layer(x, positions, segment_ids, mode, None if cache is None else cache[name])
            if cache is not None:
                new_cache[name] = c
        return x, new_cache


def single_layer_stacks(cfg: ModelConfig, layer_cls) -> list:
    """Every layer its own scanned unit: one stack "layers"."""
    return [Stack("layers", layer_cls, cfg.num_decoder_layers)]


def local_global_stacks(cfg: ModelConfig, group_cls, layer_cls) -> list:
    """Stack "layers" of L // P groups, then stack "tail" of the L % P remaining (local) single layers."""
    groups, tail = divmod(cfg.num_decoder_layers, cfg.sliding_window_pattern)
    names = group_sublayers(cfg)
    out = []
    if groups:
        out.append(Stack("layers", group_cls, groups, names, tuple(n == "global" for n in names)))
    if tail:
        out.append(Stack("tail", layer_cls, tail))
    return out
