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
from MaxText.config import ConfigError, load_config
from MaxText.config.checkpoint_overlay import saved_model_keys
from MaxText.config.derived import MODEL_KEYS
from MaxText.conversion import hf_config, mappings, orbax_io, tokenizer_files
from MaxText.conversion.hf_to_maxtext import DTYPES, Progress, finish_output, megabytes, prepare_output
from MaxText.conversion.safetensors_io import ShardedWriter
from MaxText.training import checkpointing

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
    """(our model keys with base.yml defaults filled in, scan_layers, full meta) of a checkpoint.

    tokenizer_path is "" unless the checkpoint names one (base.yml's default tokenizer is not the model's).
    """
    meta = checkpointing.read_meta(directory)
    saved = saved_model_keys(directory)
    cfg = load_config([os.path.join(paths.REPO_ROOT, "configs", "base.yml")], overlay=saved)
    keys = {k: getattr(cfg, k) for k in MODEL_KEYS}
    keys["tokenizer_path"] = keys["tokenizer_path"] if saved.get("tokenizer_path") else ""
    return keys, bool(meta.get("config", {}).get("scan_layers", True)), meta


def _layer_source(leaves: dict, m, num_layers: int, scanned: bool):
    """Where map m's tensors live: ("stacked", path) or ("layers", [path per layer])."""
    path = ("params",) + m.path
    if not m.per_layer or scanned:
        if path not in leaves:
            raise ConfigError(f"checkpoint lacks parameter {'/'.join(m.path)}")
        return "stacked", path
    per_layer = [tuple(f"layers_{i}" if p == "layers" else p for p in path) for i in range(num_layers)]
    missing = [p for p in per_layer if p not in leaves]
    if missing:
        raise ConfigError(f"checkpoint lacks parameter {'/'.join(missing[0][1:])}")
    return "layers", per_layer


def _per_layer_tensors(state: str, leaves: dict, source, m, num_layers: int, scan_axis: int):
    """Yields (layer index or None, our per-layer array) for map m, reading one orbax leaf at a time."""
    kind, where = source
    if kind == "stacked":
        stacked = orbax_io.read_leaf(state, leaves[where])
        if not m.per_layer:
            yield None, stacked
            return
        for i in range(num_layers):
            yield i, np.take(stacked, i, axis=scan_axis)
    else:
        for i, path in enumerate(where):
            yield i, orbax_io.read_leaf(state, leaves[path])


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
) -> list:
    """Writes the Hugging Face model of a MaxText checkpoint into `output`. Returns the files written."""
    src, output = step_dir(input_path, step), os.path.abspath(output)
    keys, scanned, meta = model_keys(src)
    state = os.path.join(src, "state")
    leaves = orbax_io.leaf_metadata(state)
    num_layers, scan_axis = keys["base_num_decoder_layers"], keys["param_scan_axis"]
    maps = mappings.param_maps(keys)
    sources = [_layer_source(leaves, m, num_layers, scanned) for m in maps]
    target = DTYPES[dtype] if dtype else None
    dtypes = [target or leaves[s[1] if s[0] == "stacked" else s[1][0]].dtype for s in sources]
    model_dtype = np.dtype(dtypes[0]).name
    source_hf = (meta.get("source") or {}).get("hf_config")
    config = hf_config.to_hf_config(keys, source_hf, model_dtype, _token_ids(keys))

    staging = prepare_output(output, overwrite)
    entries = []  # file order: embeddings, then layer by layer, then the final norm and head
    for layer in [None] + list(range(num_layers)):
        for m, dt in zip(maps, dtypes):
            if m.per_layer == (layer is not None):
                entries.append((m.hf_name.format(i=layer), m.hf_shape, dt))
    writer = ShardedWriter(staging, entries, max_shard_bytes)
    t0 = time.perf_counter()
    log(f"exporting {src} ({config['model_type']}, {len(entries)} tensors) -> {output}")
    progress = Progress(len(maps), log)
    for m, source, dt in zip(maps, sources, dtypes):
        t1, nbytes = time.perf_counter(), 0
        for i, array in _per_layer_tensors(state, leaves, source, m, num_layers, scan_axis):
            tensor = m.to_hf(array).astype(dt)
            writer.write(m.hf_name.format(i=i), tensor)
            nbytes += tensor.nbytes
        progress(
            f"{m.name} -> {m.hf_name} "
            f"({num_layers if m.per_layer else 1} tensor(s), {megabytes(nbytes)}, {time.perf_counter() - t1:.1f}s)"
        )
    files = writer.close()
    with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    files += ["config.json"] + _copy_tokenizer(src, keys, staging)
    finish_output(staging, output)
    log(f"done in {time.perf_counter() - t0:.1f}s: {output} ({', '.join(sorted(set(files)))})")
    return sorted(set(files))
