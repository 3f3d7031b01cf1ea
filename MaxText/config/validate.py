"""Type coercion and validation of config values. Pure Python: nothing here touches JAX."""

import yaml

from MaxText.config.errors import ConfigError, suggest
from MaxText.config.choices import STORED_QUANTIZATION, Activation, LoraTarget, OptType
from MaxText.config.schema import MESH_AXES, REMAT_TENSORS, SETTINGS, Config


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


def _check_positions(cfg: Config) -> None:
    if cfg.trainable_position_size > 0:
        _require(
            cfg.max_target_length <= cfg.trainable_position_size,
            f"max_target_length={cfg.max_target_length}: must be <= trainable_position_size="
            f"{cfg.trainable_position_size} (the learned position table has that many rows)",
        )


# The rules that depend on the model family (its traits and refusals) live with the family specs, above
# config; MaxText.models.registry registers them here when MaxText is imported.
_FAMILY_RULES = []


def register_family_rules(check) -> None:
    """Adds `check(cfg)`, which raises ConfigError, to the cross-field rules."""
    if check not in _FAMILY_RULES:
        _FAMILY_RULES.append(check)


def _check_data_sources(cfg: Config) -> None:
    """Each user dataset_type needs the keys that name its data."""
    needs = {"grain": ("grain_train_files",), "hf": ("hf_path",), "tfds": ("dataset_name",)}
    for key in needs.get(cfg.dataset_type, ()):
        _require(bool(getattr(cfg, key)), f"{key}='': dataset_type={cfg.dataset_type!r} needs it set")
    _require(
        not (cfg.hf_streaming and cfg.packing and cfg.packing_type == "first_fit" and not cfg.use_sft),
        "packing_type='first_fit': hf_streaming reads records in order and packs them as they come; "
        "expected packing_type=concat (or packing=false)",
    )
    _require(
        not cfg.use_sft or cfg.dataset_type in ("grain", "hf"),
        f"use_sft=true: dataset_type={cfg.dataset_type!r} holds no conversations; expected dataset_type=hf or "
        "grain with chat or prompt/completion records (docs/post_training.md)",
    )
    _require(
        not (cfg.use_sft and cfg.hf_streaming),
        "use_sft=true: SFT records are read into memory (each truncated or dropped as a whole); expected "
        "hf_streaming=false",
    )


def _check_attention(cfg: Config) -> None:
    """Kernel choices that can never run with the rest of the config (kernels/plan.py has the table)."""
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
            cfg.quantization in STORED_QUANTIZATION,
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


_GROUP_FIELDS = {
    "pattern": str,
    "opt_type": str,
    "lr_multiplier": float,
    "weight_decay": float,
    "frozen": bool,
}


def _check_optimizer_groups(cfg: Config) -> None:
    """Each optimizer_groups entry: a mapping of known fields with values of their type."""
    for i, entry in enumerate(cfg.optimizer_groups):
        where = f"optimizer_groups[{i}]"
        _require(
            isinstance(entry, dict),
            f"{where}={entry!r}: expected a mapping such as {{pattern: '*norm*', frozen: true}}",
        )
        for field, value in entry.items():
            _require(
                field in _GROUP_FIELDS,
                f"{where}.{field}: unknown field; expected {', '.join(_GROUP_FIELDS)}"
                + suggest(str(field), list(_GROUP_FIELDS)),
            )
            entry[field] = _CONVERTERS[_GROUP_FIELDS[field]](value, f"{where}.{field}={value!r}")
        _require(bool(entry.get("pattern")), f"{where}: needs a pattern (a glob over parameter paths)")
        kinds = [k.value for k in OptType]
        kind = entry.get("opt_type", cfg.opt_type)
        _require(
            kind in kinds,
            f"{where}.opt_type={kind!r}: expected one of {', '.join(kinds)}" + suggest(kind, kinds),
        )
        for field in ("lr_multiplier", "weight_decay"):
            _require(entry.get(field, 0.0) >= 0, f"{where}.{field}={entry.get(field)}: expected a value >= 0")


def _check_lora(cfg: Config) -> None:
    names = [t.value for t in LoraTarget]
    for name in cfg.lora_target_modules:
        hint = suggest(str(name), names)
        _require(
            name in names,
            f"lora_target_modules contains {name!r}: expected names among {', '.join(names)}" + hint,
        )
    if cfg.lora_rank > 0:
        _require(
            bool(cfg.lora_target_modules), "lora_target_modules=[]: name at least one projection to adapt"
        )


def check_cross_field(cfg: Config) -> None:
    """Rules that involve several keys. Device-dependent rules live in parallel/mesh.py."""
    if not _FAMILY_RULES:
        raise RuntimeError("no family rules registered: import MaxText (MaxText.models.registry) first")
    _check_data_sources(cfg)
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
    _require(
        cfg.use_qk_norm or not cfg.qk_norm_across_heads,
        "qk_norm_across_heads=true: it shapes the qk-norm that use_qk_norm=false leaves out; expected "
        "use_qk_norm=true",
    )
    if cfg.rope_type == "llama3":
        _require(
            cfg.rope_high_freq_factor > cfg.rope_low_freq_factor,
            f"rope_high_freq_factor={cfg.rope_high_freq_factor}: must exceed rope_low_freq_factor="
            f"{cfg.rope_low_freq_factor}",
        )
    for check in _FAMILY_RULES:
        check(cfg)
    _check_positions(cfg)
    _check_attention(cfg)
    _check_quantization(cfg)
    _check_remat(cfg)
    _check_optimizer_groups(cfg)
    _check_lora(cfg)
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
