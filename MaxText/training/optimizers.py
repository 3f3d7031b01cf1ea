"""The update rule of a run, on optax: global-norm clipping, then one optimizer per parameter group.

`opt_type` picks the optimizer of every parameter that no `optimizer_groups` entry claims. Each entry is
{pattern, opt_type, lr_multiplier, weight_decay, frozen}; a parameter belongs to the first entry whose glob
matches its path as checkpoints name it (decoder/layers/self_attention/query/kernel). Frozen groups get
optax.set_to_zero (no optimizer state, weights bit-identical). opt_type=muon orthogonalises each weight
matrix as its layer uses it (muon_dimension_numbers) and leaves the rest (embeddings, the output head,
norms, biases) to AdamW. skip_step_on_spikes and ema_decay wrap the whole rule (training/opt_wrappers.py).

With the defaults (adamw, no groups, no skipping, no EMA) the rule and its state tree are what they were
before groups existed: chain(clip_by_global_norm, adamw), so older checkpoints resume bitwise.
"""

import dataclasses
import fnmatch
from typing import Optional

import jax
import optax
from flax.core import meta
from optax import contrib

from MaxText.config import Config, ConfigError
from MaxText.config.choices import OptType
from MaxText.config.errors import suggest
from MaxText.layers import lora
from MaxText.training import opt_wrappers, schedules

# Parameters whose last path element is one of these get no weight decay: norm scales and biases (the MoE
# router's score-correction bias has no gradient; decay alone would shrink it to zero).
_NO_DECAY = ("scale", "bias", "score_correction_bias")
# Logical axes that index independent matrices: stacked (scanned) layers and MoE experts.
_BATCH_AXES = ("layers", "exp")


def path_name(path) -> str:
    """A parameter's path as checkpoints and optimizer_groups patterns name it: decoder/layers/mlp/wo/kernel."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def per_param(fn, tree):
    """tree_map_with_path(fn, tree) with Flax's logical-axis boxes as leaves: tx.init sees boxed params."""
    return jax.tree_util.tree_map_with_path(fn, tree, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))


def _norm_or_bias(path: str) -> bool:
    return path.rsplit("/", maxsplit=1)[-1] in _NO_DECAY


def decay_mask(params):
    """True for parameters that take weight decay (matrices and embeddings; not norms or biases)."""
    return per_param(lambda path, _: not _norm_or_bias(path_name(path)), params)


def muon_dimension_numbers(axes: tuple) -> Optional[contrib.MuonDimensionNumbers]:
    """The matrix view of a weight with these logical axes, or None when it is not a matrix.

    Stacked layers and experts are batch axes (one matrix each). A kernel's input axes come first: the
    attention output projection [heads, kv, embed] contracts (heads, kv) into embed, so a kernel that ends
    in `embed` maps its other axes into it; every other kernel maps its first axis into the rest
    ([embed, q_heads, kv], [embed, mlp], [kv_lora, heads, kv], [vocab, embed] looked up as one-hot rows).
    """
    own = [i for i, name in enumerate(axes) if name not in _BATCH_AXES]
    if len(own) < 2:
        return None
    if axes[own[-1]] == "embed":
        return contrib.MuonDimensionNumbers(reduction_axis=tuple(own[:-1]), output_axis=(own[-1],))
    return contrib.MuonDimensionNumbers(reduction_axis=(own[0],), output_axis=tuple(own[1:]))


@dataclasses.dataclass(frozen=True)
class Group:
    """One label of the partition: its optimizer and overrides. `source` names the config it came from;
    `chosen`: its opt_type was written in an optimizer_groups entry (not inherited from opt_type)."""

    label: str
    opt_type: str
    lr_multiplier: float = 1.0
    weight_decay: Optional[float] = None
    frozen: bool = False
    source: str = "opt_type"
    chosen: bool = False


def _entry_group(index: int, entry: dict, default_opt: str) -> Group:
    return Group(
        label=f"group_{index}",
        opt_type=entry.get("opt_type", default_opt),
        lr_multiplier=float(entry.get("lr_multiplier", 1.0)),
        weight_decay=None if entry.get("weight_decay") is None else float(entry["weight_decay"]),
        frozen=bool(entry.get("frozen", False)),
        source=f"optimizer_groups[{index}] pattern={entry['pattern']!r}",
        chosen="opt_type" in entry,
    )


def _muon_split(group: Group, path: str, axes: tuple) -> Group:
    """A group whose opt_type is muon only by inheritance sends what is not a weight matrix (norm scales and
    biases included, whatever their rank), and the embedding tables and output head (a vocab axis), to
    AdamW; a group that chose muon must hold matrices."""
    if group.opt_type != "muon" or group.frozen:
        return group
    matrix = muon_dimension_numbers(axes) is not None and not _norm_or_bias(path)
    if group.chosen:
        if not matrix:
            raise ConfigError(
                f"{group.source}: sends {path} (logical axes {axes}) to muon, which orthogonalises weight "
                "matrices only; narrow the pattern or give that parameter another opt_type"
            )
        return group
    if matrix and "vocab" not in axes:
        return group
    return dataclasses.replace(group, label=f"{group.label}_adamw", opt_type="adamw")


def _lora_group(cfg: Config, path: str, default: Group) -> Group:
    """With lora_rank > 0, what no optimizer_groups entry claims: the adapters train with opt_type, every
    other parameter (the base) is frozen."""
    if cfg.lora_rank <= 0 or lora.is_adapter(path):
        return default
    return Group(label="lora_base", opt_type=cfg.opt_type, frozen=True, source="lora_rank (base weights)")


def assign_groups(cfg: Config, param_axes: dict) -> dict:
    """{parameter path: Group}. param_axes maps each path to its logical axis names."""
    entries = [_entry_group(i, e, cfg.opt_type) for i, e in enumerate(cfg.optimizer_groups)]
    default = Group(label="default", opt_type=cfg.opt_type)
    if cfg.lora_rank > 0:
        default = Group(label="lora", opt_type=cfg.opt_type, source="lora_rank (adapters)")
    out, used = {}, set()
    for path, axes in param_axes.items():
        index = next(
            (i for i, e in enumerate(cfg.optimizer_groups) if fnmatch.fnmatchcase(path, e["pattern"])), None
        )
        if index is not None:
            used.add(index)
        group = _lora_group(cfg, path, default) if index is None else entries[index]
        out[path] = _muon_split(group, path, axes)
    for i, entry in enumerate(cfg.optimizer_groups):
        if i not in used:
            raise ConfigError(
                f"optimizer_groups[{i}] pattern={entry['pattern']!r}: matches no parameter (earlier entries "
                f"win); parameter paths look like {next(iter(param_axes))}"
                + suggest(entry["pattern"], list(param_axes))
            )
    return out


def _weight_decay(cfg: Config, group: Group) -> float:
    if group.weight_decay is not None:
        return group.weight_decay
    return {"adamw": cfg.adam_weight_decay, "adam_pax": cfg.adam_weight_decay, "muon": cfg.muon_weight_decay,
            "lion": cfg.lion_weight_decay}.get(group.opt_type, 0.0)  # fmt: skip


def _scaled(schedule, multiplier: float):
    return schedule if multiplier == 1.0 else (lambda count: multiplier * schedule(count))


def _adamw(cfg, lr, wd, _):
    return optax.adamw(
        lr, cfg.adam_b1, cfg.adam_b2, cfg.adam_eps, cfg.adam_eps_root, weight_decay=wd, mask=decay_mask
    )


def _adam_pax(cfg, lr, wd, _):
    return optax.chain(
        opt_wrappers.scale_by_adam_pax(cfg.adam_b1, cfg.adam_b2, cfg.adam_eps, cfg.adam_eps_root),
        optax.add_decayed_weights(wd, decay_mask),
        optax.scale_by_learning_rate(lr),
    )


def _muon(cfg, lr, wd, dims_of):
    """optax.contrib.muon's matrix branch (its AdamW branch is our own adamw group)."""
    return optax.chain(
        contrib.scale_by_muon(
            ns_steps=cfg.muon_ns_steps, beta=cfg.muon_beta, eps=cfg.adam_eps, nesterov=cfg.muon_nesterov,
            weight_dimension_numbers=dims_of,
        ),
        opt_wrappers.scale_by_muon_shape(dims_of, cfg.muon_consistent_rms or None),
        optax.add_decayed_weights(wd),
        optax.scale_by_learning_rate(lr),
    )  # fmt: skip


def _lion(cfg, lr, wd, _):
    return optax.lion(lr, b1=cfg.lion_b1, b2=cfg.lion_b2, weight_decay=wd, mask=decay_mask)


def _adafactor(cfg, lr, wd, _):
    return optax.adafactor(
        learning_rate=schedules.relative_step if cfg.adafactor_relative_step else lr,
        decay_rate=cfg.adafactor_decay_rate,
        multiply_by_parameter_scale=cfg.adafactor_multiply_by_parameter_scale,
        clipping_threshold=cfg.adafactor_clipping_threshold or None,
        factored=cfg.adafactor_factored,
        weight_decay_rate=wd or None,
        weight_decay_mask=decay_mask,
    )


def _sgd(cfg, lr, wd, _):
    sgd = optax.sgd(lr, momentum=cfg.sgd_momentum or None, nesterov=cfg.sgd_nesterov)
    return optax.chain(optax.add_decayed_weights(wd, decay_mask), sgd) if wd else sgd


# opt_type -> builder(cfg, learning-rate schedule, weight decay, muon dimension numbers) -> transform.
BUILDERS = {
    OptType.ADAMW: _adamw,
    OptType.ADAM_PAX: _adam_pax,
    OptType.MUON: _muon,
    OptType.LION: _lion,
    OptType.ADAFACTOR: _adafactor,
    OptType.SGD: _sgd,
}


def _transform(cfg: Config, group: Group, schedule, dims_of) -> optax.GradientTransformation:
    """The optax transform of one group (its updates already clipped)."""
    if group.frozen:
        return optax.set_to_zero()
    return BUILDERS[group.opt_type](
        cfg, _scaled(schedule, group.lr_multiplier), _weight_decay(cfg, group), dims_of
    )


def _labels_fn(groups: dict):
    return lambda tree: per_param(lambda path, _: groups[path_name(path)].label, tree)


def _dims_fn(param_axes: dict):
    """updates -> tree of MuonDimensionNumbers (optax masks the leaves of other groups out)."""
    dims = {path: muon_dimension_numbers(axes) for path, axes in param_axes.items()}
    return lambda tree: per_param(lambda path, _: dims[path_name(path)], tree)


def group_transforms(cfg: Config, param_axes: dict) -> tuple:
    """({label: transform}, {path: Group}) before clipping and the wrappers."""
    groups = assign_groups(cfg, param_axes)
    schedule = schedules.learning_rate_schedule(cfg)
    by_label = {g.label: g for g in groups.values()}
    dims_of = _dims_fn(param_axes)
    return {label: _transform(cfg, g, schedule, dims_of) for label, g in sorted(by_label.items())}, groups


def make_optimizer(cfg: Config, param_axes: dict) -> optax.GradientTransformation:
    """The full update rule. param_axes: {parameter path: logical axis names} (train_state.param_axes)."""
    transforms, groups = group_transforms(cfg, param_axes)
    if len(transforms) == 1:
        (rule,) = transforms.values()
    else:
        rule = optax.partition(transforms, _labels_fn(groups))
    parts = []
    if cfg.gradient_clipping_threshold > 0:
        parts.append(optax.clip_by_global_norm(cfg.gradient_clipping_threshold))
    parts.append(rule)
    if cfg.ema_decay > 0:
        parts.append(opt_wrappers.ema_of_params(cfg.ema_decay))
    tx = optax.chain(*parts)
    if cfg.skip_step_on_spikes:
        tx = opt_wrappers.skip_on_spikes(tx, cfg.skip_step_interval, cfg.skip_step_spike_factor)
    return tx


def state_signature(config: dict) -> dict:
    """The settings that shape the optimizer-state tree, from a config dict (a checkpoint's meta or
    dataclasses.asdict of the run's): resuming with another signature needs reset_optimizer_state=true."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config) if f.default is not dataclasses.MISSING}

    def value(key):
        return config.get(key, defaults.get(key, []))  # older checkpoints predate the newer keys

    return {
        "opt_type": value("opt_type"),
        "optimizer_groups": [
            (e.get("pattern"), e.get("opt_type", value("opt_type")), bool(e.get("frozen", False)))
            for e in value("optimizer_groups")
        ],
        "gradient_clipping": value("gradient_clipping_threshold") > 0,
        "skip_step_on_spikes": bool(value("skip_step_on_spikes")),
        "skip_step_interval": value("skip_step_interval") if value("skip_step_on_spikes") else None,
        "ema": value("ema_decay") > 0,
        "adafactor_factored": value("adafactor_factored"),
        "sgd_momentum": value("sgd_momentum") > 0,
        "lora": value("lora_rank") > 0,
    }


def trainable_mask(cfg: Config, param_axes: dict) -> dict:
    """{parameter path: False for frozen parameters}: the train step differentiates the others only."""
    return {path: not g.frozen for path, g in assign_groups(cfg, param_axes).items()}


def state_bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _size(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"


def trainable_line(cfg: Config, abstract_state, param_axes: dict) -> str:
    """What trains: the trainable share of the parameters and the optimizer state's bytes, beside what full
    fine-tuning of the same model (no adapters, nothing frozen) would keep."""
    mask = trainable_mask(cfg, param_axes)
    leaves = jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]
    total = sum(x.size for _, x in leaves)
    trained = sum(x.size for p, x in leaves if mask[path_name(p)])
    base = {path_name(p): x for p, x in leaves if not lora.is_adapter(path_name(p))}
    full_cfg = cfg.replace(lora_rank=0, optimizer_groups=[])
    full_tx = make_optimizer(full_cfg, {k: v for k, v in param_axes.items() if k in base})
    full_bytes = state_bytes(jax.eval_shape(full_tx.init, base))
    return (
        f"trainable: {trained:,} of {total:,} params ({100.0 * trained / max(total, 1):.3f}%) | optimizer state "
        f"{_size(state_bytes(abstract_state.opt_state))} (full fine-tuning: {_size(full_bytes)})"
    )


def describe(cfg: Config, abstract_params, param_axes: dict) -> list:
    """One line per group: its optimizer, parameter count and optimizer-state bytes (from shapes only)."""
    transforms, groups = group_transforms(cfg, param_axes)
    lines = []
    for label, tx in transforms.items():
        members = jax.tree_util.tree_map_with_path(
            lambda path, x, label=label: x if groups[path_name(path)].label == label else optax.MaskedNode(),
            abstract_params,
        )
        group = next(g for g in groups.values() if g.label == label)
        state = jax.eval_shape(tx.init, members)
        count = sum(x.size for x in jax.tree.leaves(members))
        kind = "frozen" if group.frozen else group.opt_type
        extra = f", lr x {group.lr_multiplier:g}" if group.lr_multiplier != 1.0 else ""
        lines.append(
            f"optimizer group {label} ({group.source}): {kind}{extra} | {count:,} params | "
            f"{_size(state_bytes(state))} optimizer state"
        )
    return lines
