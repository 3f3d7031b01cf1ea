"""Type coercion and validation of config values. Pure Python: nothing here touches JAX."""

import yaml

from MaxText.config.errors import ConfigError, suggest
from MaxText.config.choices import Activation
from MaxText.config.schema import MESH_AXES, REMAT_TENSORS, SETTINGS, Config
from MaxText.models.registry import LOCAL_GLOBAL_BLOCKS, MLA_BLOCKS, MOE_BLOCKS


def _as_bool(value, bad):
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{bad}: expected a boolean (true or false)")


def _as_int(value, bad):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{bad}: expected int")
    try:
        as_float = float(value)
    except ValueError:
        raise ConfigError(f"{bad}: expected int") from None
    if not as_float.is_integer():
        raise ConfigError(f"{bad}: expected an integer")
    return int(as_float)


def _as_float(value, bad):
    if isinstance(value, bool):
        raise ConfigError(f"{bad}: expected float")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{bad}: expected float") from None


def _as_list(value, bad):
    if not isinstance(value, list):
        raise ConfigError(f"{bad}: expected a list, e.g. key=[a,b]")
    return value


def _as_str(value, bad):
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{bad}: expected str")
    return value


_CONVERTERS = {bool: _as_bool, int: _as_int, float: _as_float, list: _as_list, str: _as_str}


def coerce(key: str, value, from_cli: bool, source: str):
    """Converts `value` to the declared type of `key`, or raises ConfigError naming key, value and type.

    Command-line values arrive as strings: str keys keep them verbatim, others are parsed as YAML scalars.
    PyYAML reads exponent floats without a dot (1e-5) as strings, so float keys accept numeric strings.
    """
    tp = SETTINGS[key].type
    if from_cli and tp is not str:
        try:
            value = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(
                f"{key}={value!r} ({source}): cannot parse value: {e}".splitlines()[0]
            ) from None
    return _CONVERTERS[tp](value, f"{key}={value!r} ({source})")


def check_field(key: str, value) -> None:
    """Checks the per-key constraints declared in the schema."""
    s = SETTINGS[key]
    if s.choices is not None and value not in [c.value for c in s.choices]:
        values = [c.value for c in s.choices]
        raise ConfigError(
            f"{key}={value!r}: expected one of {', '.join(repr(c) for c in values)}{suggest(str(value), values)}"
        )
    if s.gt is not None and not value > s.gt:
        raise ConfigError(f"{key}={value!r}: expected a value > {s.gt}")
    if s.ge is not None and not value >= s.ge:
        raise ConfigError(f"{key}={value!r}: expected a value >= {s.ge}")
    if s.le is not None and not value <= s.le:
        raise ConfigError(f"{key}={value!r}: expected a value <= {s.le}")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _check_model_features(cfg: Config) -> None:
    """Rules for the family-specific model keys (layer patterns, learned positions)."""
    if cfg.decoder_block in LOCAL_GLOBAL_BLOCKS:
        _require(
            cfg.sliding_window_pattern >= 1,
            f"sliding_window_pattern=0: decoder_block={cfg.decoder_block!r} scans groups of "
            "sliding_window_pattern layers (the last one global); expected >= 1",
        )
    else:
        _require(
            cfg.sliding_window_pattern == 0,
            f"sliding_window_pattern={cfg.sliding_window_pattern}: only decoder_block "
            f"{' or '.join(LOCAL_GLOBAL_BLOCKS)} mixes local and global layers; expected 0 for "
            f"{cfg.decoder_block!r}",
        )
    if cfg.trainable_position_size > 0:
        _require(
            cfg.max_target_length <= cfg.trainable_position_size,
            f"max_target_length={cfg.max_target_length}: must be <= trainable_position_size="
            f"{cfg.trainable_position_size} (the learned position table has that many rows)",
        )


def _check_data_sources(cfg: Config) -> None:
    """Each user dataset_type needs the keys that name its data."""
    needs = {"grain": ("grain_train_files",), "hf": ("hf_path",), "tfds": ("dataset_name",)}
    for key in needs.get(cfg.dataset_type, ()):
        _require(bool(getattr(cfg, key)), f"{key}='': dataset_type={cfg.dataset_type!r} needs it set")
    _require(
        not (cfg.hf_streaming and cfg.packing and cfg.packing_type == "first_fit"),
        "packing_type='first_fit': hf_streaming reads records in order and packs them as they come; "
        "expected packing_type=concat (or packing=false)",
    )


def _check_moe(cfg: Config) -> None:
    """Rules for the mixture-of-experts keys."""
    moe = cfg.decoder_block in MOE_BLOCKS
    if not moe:
        _require(
            cfg.num_experts == 0,
            f"num_experts={cfg.num_experts}: decoder_block={cfg.decoder_block!r} has no MoE layers; expected 0 "
            f"(MoE blocks: {', '.join(MOE_BLOCKS)})",
        )
        return
    e, k, g = cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_n_group
    _require(e > 0, f"num_experts=0: decoder_block={cfg.decoder_block!r} routes to experts; expected > 0")
    _require(
        cfg.base_moe_mlp_dim > 0, "base_moe_mlp_dim=0: MoE layers need the expert hidden size; expected > 0"
    )
    _require(k <= e, f"num_experts_per_tok={k}: must be <= num_experts={e}")
    _require(e % g == 0, f"moe_n_group={g}: must divide num_experts={e}")
    _require(cfg.moe_topk_group <= g, f"moe_topk_group={cfg.moe_topk_group}: must be <= moe_n_group={g}")
    _require(
        k <= cfg.moe_topk_group * (e // g),
        f"num_experts_per_tok={k}: must be <= moe_topk_group x experts per group = "
        f"{cfg.moe_topk_group * (e // g)}",
    )
    if cfg.moe_group_score == "top2_sum" and g > 1:
        _require(e // g >= 2, f"moe_group_score='top2_sum': needs >= 2 experts per group, got {e // g}")
    _require(
        cfg.first_num_dense_layers < cfg.base_num_decoder_layers,
        f"first_num_dense_layers={cfg.first_num_dense_layers}: must be < base_num_decoder_layers="
        f"{cfg.base_num_decoder_layers}",
    )


def _check_mla(cfg: Config) -> None:
    """Rules for the multi-head latent attention keys."""
    if cfg.decoder_block not in MLA_BLOCKS:
        return
    _require(
        cfg.kv_lora_rank > 0,
        f"kv_lora_rank=0: decoder_block={cfg.decoder_block!r} uses latent attention; expected > 0",
    )
    _require(
        cfg.qk_rope_head_dim % 2 == 0,
        f"qk_rope_head_dim={cfg.qk_rope_head_dim}: rotary embeddings need an even size",
    )


def _check_attention(cfg: Config) -> None:
    """Kernel choices that can never run with the rest of the config (kernels/select.py has the table)."""
    _require(
        cfg.attention != "paged" or cfg.kv_cache == "paged",
        f"attention='paged': the paged decode kernel reads a paged KV cache, but kv_cache={cfg.kv_cache!r}; "
        "expected kv_cache=paged (or attention=autoselected)",
    )
    _require(
        cfg.attention != "splash" or cfg.flash_block_size % 128 == 0,
        f"flash_block_size={cfg.flash_block_size}: attention='splash' tiles by 128 TPU lanes; expected a "
        "multiple of 128",
    )


def _check_quantization(cfg: Config) -> None:
    if cfg.checkpoint_is_quantized:
        _require(
            cfg.quantization in ("int8", "int8w"),
            f"quantization={cfg.quantization!r}: checkpoint_is_quantized=true holds int8 kernels; "
            "expected int8 or int8w",
        )


def _check_remat(cfg: Config) -> None:
    """Per-tensor remat keys only mean something under remat_policy=custom: refuse them elsewhere."""
    if cfg.remat_policy == "custom":
        return
    for tensor in REMAT_TENSORS:
        _require(
            getattr(cfg, tensor) == "remat",
            f"{tensor}={getattr(cfg, tensor)!r}: per-tensor placement needs remat_policy=custom "
            f"(remat_policy={cfg.remat_policy!r})",
        )


def check_cross_field(cfg: Config, known_blocks) -> None:
    """Rules that involve several keys. Device-dependent rules live in parallel/mesh.py."""
    _check_data_sources(cfg)
    _require(
        cfg.decoder_block in known_blocks,
        f"decoder_block={cfg.decoder_block!r}: expected one of {', '.join(sorted(known_blocks))}"
        + suggest(cfg.decoder_block, known_blocks),
    )
    _require(
        cfg.base_num_query_heads % cfg.base_num_kv_heads == 0,
        f"base_num_kv_heads={cfg.base_num_kv_heads}: must divide base_num_query_heads="
        f"{cfg.base_num_query_heads}",
    )
    _require(len(cfg.mlp_activations) > 0, "mlp_activations=[]: expected at least one activation")
    activations = [a.value for a in Activation]
    for act in cfg.mlp_activations:
        _require(
            act in activations,
            f"mlp_activations contains {act!r}: expected each of {', '.join(activations)}"
            + suggest(str(act), activations),
        )
    _require(cfg.head_dim % 2 == 0, f"head_dim={cfg.head_dim}: rotary embeddings need an even head dimension")
    if cfg.rope_type == "llama3":
        _require(
            cfg.rope_high_freq_factor > cfg.rope_low_freq_factor,
            f"rope_high_freq_factor={cfg.rope_high_freq_factor}: must exceed rope_low_freq_factor="
            f"{cfg.rope_low_freq_factor}",
        )
    _check_model_features(cfg)
    _check_moe(cfg)
    _check_mla(cfg)
    _check_attention(cfg)
    _check_quantization(cfg)
    _check_remat(cfg)
    axes = list(MESH_AXES)
    _require(
        sorted(cfg.mesh_axes) == sorted(axes),
        f"mesh_axes={cfg.mesh_axes}: expected each of {', '.join(axes)} exactly once, in any order",
    )
    for rule in cfg.logical_axis_rules:
        ok = isinstance(rule, list) and len(rule) == 2 and isinstance(rule[0], str)
        _require(ok, f"logical_axis_rules entry {rule!r}: expected [logical_name, mesh_axis_or_list]")
        targets = rule[1] if isinstance(rule[1], list) else [rule[1]]
        for t in targets:
            _require(
                t in axes,
                f"logical_axis_rules entry {rule!r}: mesh axis {t!r} is not one of {axes}"
                + suggest(str(t), axes),
            )
    if cfg.profiler:
        _require(
            cfg.skip_first_n_steps_for_profiler + cfg.profiler_steps <= cfg.steps,
            f"profiler_steps={cfg.profiler_steps}: skip_first_n_steps_for_profiler + profiler_steps must "
            f"be <= steps={cfg.steps}",
        )
