"""LoRA adapters out of and into MaxText: merged full checkpoints, and Hugging Face PEFT adapter directories.

  merge_lora   adapter checkpoint (a LoRA run, or one of its steps) -> a full checkpoint whose kernels are
               W + (alpha / r) B A (float only; an int8 base would lose the adapters to rounding).
  lora_to_peft adapter checkpoint -> adapter_model.safetensors + adapter_config.json, which PEFT loads onto
               the base as `maxtext_to_hf` exports it.
  peft_to_lora PEFT adapter directory + our base checkpoint -> an adapter checkpoint (meta points at the base).

Layouts. Our adapters are lora_a [*in, r] and lora_b [r, *out] beside a kernel [*in, *out] (a layer axis at
param_scan_axis when scanned). A Hugging Face Linear weight is [out, in] = our kernel reshaped to
[in, out] and transposed, so PEFT's lora_A.weight [r, in] is lora_a reshaped to [in, r] and transposed, and
lora_B.weight [out, r] is lora_b reshaped to [r, out] and transposed. Only such plain projections export; a
mapping that permutes rows (none of the shipped families' projections does) is refused.
"""

import json
import os

import jax
import numpy as np

from MaxText.checkpoint import adapters, checkpointing, orbax_io
from MaxText.config import ConfigError, model_config
from MaxText.config.loader import load_config
from MaxText import paths
from MaxText.checkpoint.config_overlay import saved_model_keys
from MaxText.conversion.hf_to_maxtext import finish_output, prepare_output
from MaxText.layers import lora
from MaxText.models import hf_mappings
from MaxText.models.transformer import make_model
from MaxText.training.train_state import abstract_boxed_params, param_axes

PEFT_PREFIX = "base_model.model."
ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"


def _config(step_dir: str, **overrides):
    keys = dict(saved_model_keys(step_dir), **overrides)
    return load_config([os.path.join(paths.REPO_ROOT, "configs", "base.yml")], overlay=keys)


def _abstract(cfg):
    """(abstract params, {path: logical axes}) of the model cfg describes; allocates nothing."""
    boxed = abstract_boxed_params(make_model(model_config(cfg), "cpu"))
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    return nn.unbox(boxed), param_axes(boxed)


def _flat(tree) -> dict:
    return {"/".join(str(k.key) for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflat(flat: dict) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *head, last = path.split("/")
        for key in head:
            node = node.setdefault(key, {})
        node[last] = value
    return out


def _step(path: str) -> str:
    try:
        return checkpointing.resolve_step_dir(path)
    except FileNotFoundError as e:
        raise ConfigError(f"--input {path}: {e}") from None


def _adapter_config(step_dir: str):
    cfg = _config(step_dir)
    if cfg.lora_rank <= 0:
        raise ConfigError(f"--input {step_dir}: not a LoRA checkpoint (its run has lora_rank=0)")
    return cfg


def _low_rank_product(a: np.ndarray, b: np.ndarray, layer_axis) -> np.ndarray:
    """a [*in, r] . b [r, *out] -> [*in, *out], with a layer axis at `layer_axis` of all three (or None)."""
    if layer_axis is not None:
        a, b = np.moveaxis(a, layer_axis, 0), np.moveaxis(b, layer_axis, 0)
        out = np.stack([_low_rank_product(x, y, None) for x, y in zip(a, b)])
        return np.moveaxis(out, 0, layer_axis)
    return np.tensordot(a, b, axes=([a.ndim - 1], [0]))


def merge_lora(input_path: str, output: str, overwrite: bool = False, log=print) -> str:
    """Writes the merged full checkpoint of an adapter checkpoint; returns the output directory."""
    step_dir = _step(input_path)
    cfg = _adapter_config(step_dir)
    abstract, axes = _abstract(cfg)
    params = _flat(jax.device_get(checkpointing.load_params(step_dir, abstract, ema=False)))
    scale = cfg.lora_alpha / cfg.lora_rank
    merged = {}
    for path, value in params.items():
        if lora.is_adapter(path):
            continue
        owner = path.rsplit("/", 1)[0]
        if path.endswith("/kernel") and f"{owner}/lora_a" in params:
            if not np.issubdtype(value.dtype, np.floating):
                raise ConfigError(
                    f"--input {step_dir}: {path} is {value.dtype}; merging adapters into a quantized base "
                    "would round them away (merge into the float base, then quantize)"
                )
            a, b = params[f"{owner}/lora_a"], params[f"{owner}/lora_b"]
            layer = _layer_axis(axes, path)
            delta = scale * _low_rank_product(a.astype(np.float32), b.astype(np.float32), layer)
            value = (value.astype(np.float32) + delta).astype(value.dtype)
        merged[path] = value
    output = os.path.abspath(output)
    staging = prepare_output(output, overwrite)
    tree = {"params": _unflat(merged)}
    orbax_io.save_streaming(
        os.path.join(staging, "state"),
        jax.tree.map(lambda x: orbax_io.LazyArray(x.shape, x.dtype, lambda x=x: iter([(..., x)])), tree),
    )
    meta = checkpointing.read_meta(step_dir)
    config = dict(meta.get("config", {}), lora_rank=0)
    record = {"format_version": checkpointing.FORMAT_VERSION, "step": 0, "config": config,
              "tokenizer": meta.get("tokenizer"), "source": {"format": "merge_lora", "path": step_dir}}  # fmt: skip
    orbax_io.save_json(os.path.join(staging, "meta"), record)
    finish_output(staging, output)
    log(f"merged the rank-{cfg.lora_rank} adapters of {step_dir} into {output}")
    return output


def _projection_maps(cfg) -> dict:
    """{our kernel path inside the params: its TensorMap}, for the projections adapters may sit on."""
    base_cfg = model_config(cfg.replace(lora_rank=0))
    return {"/".join(m.path): m for m in hf_mappings.tensor_maps(cfg.decoder_block, base_cfg)}


def _check_plain(m, in_shape: tuple, out_shape: tuple) -> None:
    in_flat, out_flat = int(np.prod(in_shape)), int(np.prod(out_shape))
    if not (m.transpose and tuple(m.hf_shape) == (out_flat, in_flat)):
        raise ConfigError(
            f"{m.name}: its Hugging Face tensor is not a plain [out, in] projection; cannot export"
        )


def _units(x: np.ndarray, layer_axis, count: int) -> list:
    return [np.take(x, u, axis=layer_axis) for u in range(count)] if layer_axis is not None else [x]


def lora_to_peft(input_path: str, output: str, overwrite: bool = False, log=print) -> list:
    """Writes the PEFT adapter directory of an adapter checkpoint; returns the files written."""
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    step_dir = _step(input_path)
    cfg = _adapter_config(step_dir)
    if not cfg.scan_layers:
        raise ConfigError(
            f"--input {step_dir}: export a scan_layers=true run (resume it once with scan_layers=true)"
        )
    abstract, axes = _abstract(cfg)
    wanted = adapters.prune(abstract, jax.tree_util.tree_map_with_path(
        lambda p, _: lora.is_adapter("/".join(str(k.key) for k in p)), abstract))  # fmt: skip
    params = _flat(jax.device_get(checkpointing.load_params(step_dir, wanted, ema=False)))
    maps = _projection_maps(cfg)
    tensors, modules = {}, set()
    parameters = _export_experts(params, axes, maps, cfg, tensors)
    for path, a in params.items():
        if not path.endswith("/lora_a") or path.endswith(("wi_lora_a", "wo_lora_a")):
            continue
        owner = path[: -len("/lora_a")]
        b = params[f"{owner}/lora_b"]
        m = maps.get(f"{owner}/kernel".removeprefix("params/"))
        if m is None:
            raise ConfigError(
                f"{owner}: no Hugging Face tensor for this projection; cannot export its adapter"
            )
        layer = _layer_axis(axes, path)
        a_units, b_units = _units(a, layer, m.units), _units(b, layer, m.units)
        in_shape, out_shape = a_units[0].shape[:-1], b_units[0].shape[1:]
        _check_plain(m, in_shape, out_shape)
        for name, ua, ub in zip(m.hf_names, a_units, b_units):
            stem = PEFT_PREFIX + name.removesuffix(".weight")
            tensors[f"{stem}.lora_A.weight"] = np.ascontiguousarray(ua.reshape(-1, cfg.lora_rank).T)
            tensors[f"{stem}.lora_B.weight"] = np.ascontiguousarray(ub.reshape(cfg.lora_rank, -1).T)
            modules.add(name.removesuffix(".weight").rsplit(".", 1)[-1])
    output = os.path.abspath(output)
    staging = prepare_output(output, overwrite)
    save_file(tensors, os.path.join(staging, ADAPTER_FILE), metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout, "target_modules": sorted(modules), "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None, "base_model_name_or_path": None,
        **({"target_parameters": parameters} if parameters else {}),
    }  # fmt: skip
    with open(os.path.join(staging, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(peft_config, f, indent=2)
    finish_output(staging, output)
    log(f"wrote {len(tensors)} adapter tensors ({', '.join(sorted(modules))}) -> {output}")
    return [ADAPTER_FILE, CONFIG_FILE]


# Our expert adapters -> (the fused transformers tensor they adapt, the key PEFT stores its factors under).
# PEFT nests one wrapper per targeted parameter: down_proj's factors sit on the outer one, gate_up_proj's on
# its base_layer (what PEFT writes for target_parameters [experts.down_proj, experts.gate_up_proj]).
_EXPERT_TENSORS = {"wi": ("gate_up_proj", "experts.base_layer"), "wo": ("down_proj", "experts")}


def _expert_stems(maps: dict, owner: str) -> list:
    """`{layer}.{moe module}` of each unit of the MoE stack at `owner` (decoder/<stack>/mlp)."""
    m = maps[f"{owner}/wi_0"] if f"{owner}/wi_0" in maps else maps[f"{owner}/wi"]
    per_unit = len(m.hf_names) // m.units
    return [m.hf_names[u * per_unit].split(".experts.")[0] for u in range(m.units)]


def _layer_axis(axes: dict, path: str):
    """The stacked layer axis of a parameter (None when unscanned)."""
    return axes[path].index("layers") if "layers" in axes[path] else None


def _expert_adapters(flat: dict, axes: dict):
    """(A's path, B's path, owner module, PEFT key, layer axis) of each routed-expert adapter in `flat`."""
    for path in flat:
        kind = path.rsplit("/", 1)[-1].removesuffix("_lora_a")
        if kind in _EXPERT_TENSORS and path.endswith("_lora_a"):
            owner = path.rsplit("/", 1)[0]
            yield path, f"{owner}/{kind}_lora_b", owner, _EXPERT_TENSORS[kind][1], _layer_axis(axes, path)


def _export_experts(params: dict, axes: dict, maps: dict, cfg, tensors: dict) -> list:
    """PEFT's factors of every expert adapter into `tensors`; returns the target_parameters they need."""
    r, parameters = cfg.lora_rank, set()
    for a_path, b_path, owner, key, layer in _expert_adapters(params, axes):
        a, b = params[a_path], params[b_path]
        stems = _expert_stems(maps, owner)
        for stem, ua, ub in zip(stems, _units(a, layer, len(stems)), _units(b, layer, len(stems))):
            e, din, _ = ua.shape  # [E, in, r], [E, r, out]
            tensors[f"{PEFT_PREFIX}{stem}.{key}.lora_A.weight"] = np.ascontiguousarray(
                ua.transpose(0, 2, 1).reshape(e * r, din)
            )
            tensors[f"{PEFT_PREFIX}{stem}.{key}.lora_B.weight"] = np.ascontiguousarray(
                ub.transpose(2, 1, 0).reshape(ub.shape[2], r * e)
            )
        module = stems[0].rsplit(".", 1)[-1]
        parameters.update(f"{module}.experts.{t}" for t, _ in _EXPERT_TENSORS.values())
    return sorted(parameters)


def _import_experts(flat_abstract: dict, axes: dict, maps: dict, r: int, tensors: dict, used: set) -> dict:
    """Our expert adapters from PEFT's factors (the inverse of _export_experts)."""
    out = {}
    for a_path, b_path, owner, key, layer in _expert_adapters(flat_abstract, axes):
        leaf, b_leaf = flat_abstract[a_path], flat_abstract[b_path]
        a_units, b_units = [], []
        for stem in _expert_stems(maps, owner):
            ka, kb = f"{PEFT_PREFIX}{stem}.{key}.lora_A.weight", f"{PEFT_PREFIX}{stem}.{key}.lora_B.weight"
            if ka not in tensors or kb not in tensors:
                raise ConfigError(f"no {ka} in the PEFT adapter (expected for lora_target_modules 'experts')")
            used.update((ka, kb))
            e, din, _ = _unit_shape(leaf.shape, layer)
            dout = _unit_shape(b_leaf.shape, layer)[2]
            a_units.append(tensors[ka].reshape(e, r, din).transpose(0, 2, 1).astype(np.float32))
            b_units.append(tensors[kb].reshape(dout, r, e).transpose(2, 1, 0).astype(np.float32))
        out[a_path] = np.stack(a_units, axis=layer) if layer is not None else a_units[0]
        out[b_path] = np.stack(b_units, axis=layer) if layer is not None else b_units[0]
    return out


def _read_peft(directory: str) -> tuple:
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

    config_file, weights = os.path.join(directory, CONFIG_FILE), os.path.join(directory, ADAPTER_FILE)
    if not (os.path.isfile(config_file) and os.path.isfile(weights)):
        raise ConfigError(
            f"--input {directory}: expected {CONFIG_FILE} and {ADAPTER_FILE} (a PEFT LoRA adapter)"
        )
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    for key, expected in (
        ("peft_type", "LORA"),
        ("use_dora", False),
        ("use_rslora", False),
        ("bias", "none"),
    ):
        if config.get(key, expected) != expected:
            raise ConfigError(
                f"--input {config_file}: {key}={config.get(key)!r}; only {key}={expected!r} reads"
            )
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ConfigError(
            f"--input {config_file}: per-module ranks (rank_pattern, alpha_pattern) do not read yet"
        )
    parameters = sorted(config.get("target_parameters") or [])
    tails = sorted(p.rsplit(".", 1)[-1] for p in parameters)
    if parameters and (
        tails != ["down_proj", "gate_up_proj"] or any(".experts." not in p for p in parameters)
    ):
        raise ConfigError(
            f"--input {config_file}: target_parameters={parameters}; only the routed experts' gate_up_proj "
            "and down_proj together read"
        )
    return config, load_file(weights)


def peft_to_lora(input_path: str, base: str, output: str, overwrite: bool = False, log=print) -> str:
    """Writes an adapter checkpoint from a PEFT adapter directory and our base checkpoint `base`."""
    config, tensors = _read_peft(os.path.abspath(input_path))
    base_dir = _step(base)
    targets = sorted(config["target_modules"]) if isinstance(config["target_modules"], list) else None
    if targets is not None and config.get("target_parameters"):
        targets.append(lora.EXPERTS)
    if targets is None or any(t not in lora.PEFT_MODULES for t in targets):
        raise ConfigError(
            f"--input {input_path}: target_modules={config['target_modules']!r}; expected names among "
            f"{sorted(lora.PEFT_MODULES)}"
        )
    cfg = _config(base_dir, lora_rank=int(config["r"]), lora_alpha=float(config["lora_alpha"]),
                  lora_target_modules=targets)  # fmt: skip
    abstract, axes = _abstract(cfg)
    maps = _projection_maps(cfg)
    flat_abstract, used = _flat(abstract), set()
    out = _import_experts(flat_abstract, axes, maps, int(config["r"]), tensors, used)
    for path, leaf in flat_abstract.items():
        if not path.endswith("/lora_a") or path.endswith(("wi_lora_a", "wo_lora_a")):
            continue
        owner = path[: -len("/lora_a")]
        m = maps["/".join(owner.split("/")) + "/kernel"]
        layer = _layer_axis(axes, path)
        b_leaf = flat_abstract[f"{owner}/lora_b"]
        a_units, b_units = [], []
        for name in m.hf_names:
            stem = PEFT_PREFIX + name.removesuffix(".weight")
            ka, kb = f"{stem}.lora_A.weight", f"{stem}.lora_B.weight"
            if ka not in tensors or kb not in tensors:
                raise ConfigError(f"--input {input_path}: no {ka} in {ADAPTER_FILE}")
            used.update((ka, kb))
            unit_a = _unit_shape(leaf.shape, layer)
            unit_b = _unit_shape(b_leaf.shape, layer)
            a_units.append(tensors[ka].T.reshape(unit_a).astype(np.float32))
            b_units.append(tensors[kb].T.reshape(unit_b).astype(np.float32))
        out[path] = np.stack(a_units, axis=layer) if layer is not None else a_units[0]
        out[f"{owner}/lora_b"] = np.stack(b_units, axis=layer) if layer is not None else b_units[0]
    unused = sorted(set(tensors) - used)
    if unused:
        raise ConfigError(
            f"--input {input_path}: {len(unused)} tensors map to no projection, e.g. {unused[0]}"
        )
    return _write_adapter_checkpoint(out, cfg, base_dir, output, overwrite, log)


def _unit_shape(shape: tuple, layer_axis) -> tuple:
    return tuple(s for i, s in enumerate(shape) if i != layer_axis)


def _write_adapter_checkpoint(flat: dict, cfg, base_dir: str, output: str, overwrite: bool, log) -> str:
    output = os.path.abspath(output)
    staging = prepare_output(output, overwrite)
    step = os.path.join(staging, "checkpoints", "0")
    tree = {"params": _unflat({k.removeprefix("params/"): v for k, v in flat.items()})}
    orbax_io.save_streaming(
        os.path.join(step, "state"),
        jax.tree.map(lambda x: orbax_io.LazyArray(x.shape, x.dtype, lambda x=x: iter([(..., x)])), tree),
    )
    base_meta = checkpointing.read_meta(base_dir)
    config = dict(base_meta.get("config", {}), lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                  lora_target_modules=list(cfg.lora_target_modules))  # fmt: skip
    meta = {"format_version": checkpointing.FORMAT_VERSION, "step": 0, "config": config,
            "tokenizer": base_meta.get("tokenizer"), adapters.BASE_KEY: adapters.base_record(base_dir, False),
            "source": {"format": "peft"}}  # fmt: skip
    orbax_io.save_json(os.path.join(step, "meta"), meta)
    finish_output(staging, output)
    log(f"wrote the rank-{cfg.lora_rank} adapters onto {base_dir} -> {output}")
    return output
