"""MaxText checkpoint (converted directory or run directory) -> Hugging Face directory, one parameter at a time.

Writes config.json (transformers 5.x format), model.safetensors or sharded model-0000k-of-0000n.safetensors
with model.safetensors.index.json, and the tokenizer files. Each stacked parameter is read from the orbax
checkpoint alone, split into its per-layer tensors and written into the files' preallocated slots, so peak
host memory is about one stacked parameter. Tensors keep their stored dtype unless `dtype` is given.
"""

import json
import os
import shutil
import time

import numpy as np

from MaxText import paths
from MaxText.config import ConfigError, load_config, model_config
from MaxText.checkpoint.config_overlay import saved_model_keys
from MaxText.config.derived import MODEL_KEYS
from MaxText.checkpoint import orbax_io
from MaxText.conversion import tokenizer_files
from MaxText.conversion.hf_to_maxtext import DTYPES, Progress, finish_output, megabytes, prepare_output
from MaxText.checkpoint.safetensors_io import ShardedWriter
from MaxText.models import hf_mappings
from MaxText.checkpoint import checkpointing

DEFAULT_SHARD_BYTES = 5 * 2**30


def step_dir(path: str, step: int | None) -> str:
    """The step directory of a converted directory, a run directory (latest step, or `step`) or a step dir."""
    path = os.path.abspath(path)
    if step is not None:
        for candidate in (checkpointing.checkpoint_dir(path), path):
            if os.path.isdir(os.path.join(candidate, str(step), "state")):
                return os.path.join(candidate, str(step))
        raise ConfigError(f"--input {path}: no checkpoint for --step {step}")
    try:
        return checkpointing.resolve_step_dir(path)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None


def model_keys(directory: str) -> tuple:
    """(our model keys with base.yml defaults filled in, its ModelConfig, scan_layers, full meta).

    tokenizer_path is "" unless the checkpoint names one (base.yml's default tokenizer is not the model's).
    """
    meta = checkpointing.read_meta(directory)
    saved = saved_model_keys(directory)
    cfg = load_config([os.path.join(paths.REPO_ROOT, "configs", "base.yml")], overlay=saved)
    keys = {k: getattr(cfg, k) for k in MODEL_KEYS}
    keys["tokenizer_path"] = keys["tokenizer_path"] if saved.get("tokenizer_path") else ""
    return keys, model_config(cfg), bool(meta.get("config", {}).get("scan_layers", True)), meta


def _leaf_paths(leaves: dict, m, scanned: bool) -> list:
    """The checkpoint leaves holding map m: [the stacked (or unstacked) leaf], or one per unit when the run
    was unscanned (scan_layers=false)."""
    if not m.stacked or scanned:
        paths_ = [("params",) + m.path]
    else:
        paths_ = [("params",) + m.unscanned_path(u) for u in range(m.units)]
    missing = [p for p in paths_ if p not in leaves]
    if missing:
        raise ConfigError(f"checkpoint lacks parameter {'/'.join(missing[0][1:])}")
    return paths_


def _per_layer_tensors(state: str, leaves: dict, paths_: list, m, scan_axis: int, scanned: bool):
    """Yields (Hugging Face name, our per-layer or per-expert array) for map m, reading one orbax leaf at a
    time: the stacked leaf, or each unit's leaf of an unscanned run."""
    if m.stacked and scanned:
        stacked = orbax_io.read_leaf(state, leaves[paths_[0]])
        for i, name in enumerate(m.hf_names):
            yield name, stacked[m.index(i, scan_axis)]
        return
    per_leaf = len(m.hf_names) // len(paths_)  # the experts of a unit, or 1
    for u, path in enumerate(paths_):
        leaf = orbax_io.read_leaf(state, leaves[path])
        for i in range(u * per_leaf, (u + 1) * per_leaf):
            yield m.hf_names[i], leaf[m.index(i, scan_axis, stacked=False)]
        del leaf


def _copy_tokenizer(src: str, keys: dict, output: str) -> list:
    """Copies the tokenizer files of a converted directory, else the checkpoint's tokenizer_path and the
    companion files beside it."""
    copied = tokenizer_files.copy(src, output, tokenizer_files.present(src))
    path = keys["tokenizer_path"]
    if tokenizer_files.main_file(src) or not os.path.isfile(path):
        return copied
    folder = os.path.dirname(path)
    companions = [f for f in tokenizer_files.COMPANION_FILES if os.path.isfile(os.path.join(folder, f))]
    name = "tokenizer.model" if path.endswith(".model") else os.path.basename(path)
    shutil.copyfile(path, os.path.join(output, name))
    return copied + [name] + tokenizer_files.copy(folder, output, [c for c in companions if c not in copied])


def _token_ids(keys: dict) -> dict:
    path = keys["tokenizer_path"]
    if not os.path.isfile(path):
        return {"bos_id": None, "eos_id": None, "pad_id": None}
    from MaxText.input_pipeline import tokenizers  # pylint: disable=import-outside-toplevel

    tok = tokenizers.load_tokenizer(path)
    return {"bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id}


def export(
    input_path: str,
    output: str,
    step: int | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    log=print,
    ema: bool = True,
) -> list:
    """Writes the Hugging Face model of a MaxText checkpoint into `output`. Returns the files written.
    With `ema`, a run that kept an EMA of the weights (ema_decay > 0) exports the EMA."""
    src, output = step_dir(input_path, step), os.path.abspath(output)
    keys, cfg, scanned, meta = model_keys(src)
    state = os.path.join(src, "state")
    leaves = orbax_io.leaf_metadata(state)
    prefix = orbax_io.ema_prefix(orbax_io.tree_metadata(state).tree) if ema else None
    if prefix:  # the EMA's leaves stand in for the params' (same tree under the prefix)
        leaves = {("params",) + k[len(prefix) :]: v for k, v in leaves.items() if k[: len(prefix)] == prefix}
        log(
            f"{src}: exporting the EMA of the weights its run kept (ema_decay); --raw-params for the raw ones"
        )
    maps = hf_mappings.tensor_maps(keys["decoder_block"], cfg)
    sources = [_leaf_paths(leaves, m, scanned) for m in maps]
    target = DTYPES[dtype] if dtype else None
    dtypes = [target or leaves[p[0]].dtype for p in sources]
    source_hf = (meta.get("source") or {}).get("hf_config")
    config = hf_mappings.keys_to_hf_config(keys, source_hf, np.dtype(dtypes[0]).name, _token_ids(keys))

    staging = prepare_output(output, overwrite)
    entries = [(name, m.hf_shape, dt) for m, dt in zip(maps, dtypes) for name in m.hf_names]
    entries.sort(key=lambda e: hf_mappings.file_order(e[0]))
    writer = ShardedWriter(staging, entries, max_shard_bytes)
    t0 = time.perf_counter()
    log(f"exporting {src} ({config['model_type']}, {len(entries)} tensors) -> {output}")
    progress = Progress(len(maps), log)
    for m, paths_, dt in zip(maps, sources, dtypes):
        t1, nbytes = time.perf_counter(), 0
        for name, array in _per_layer_tensors(state, leaves, paths_, m, cfg.param_scan_axis, scanned):
            tensor = m.to_hf(array).astype(dt)
            writer.write(name, tensor)
            nbytes += tensor.nbytes
        target_names = m.hf_names[0] if len(m.hf_names) == 1 else f"{m.hf_names[0]} .. {m.hf_names[-1]}"
        progress(
            f"{m.name} -> {target_names} "
            f"({len(m.hf_names)} tensor(s), {megabytes(nbytes)}, {time.perf_counter() - t1:.1f}s)"
        )
    files = writer.close()
    with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    files += ["config.json"] + _copy_tokenizer(src, keys, staging)
    finish_output(staging, output)
    log(f"done in {time.perf_counter() - t0:.1f}s: {output} ({', '.join(sorted(set(files)))})")
    return sorted(set(files))
