"""Hugging Face directory -> MaxText checkpoint directory, streaming one stacked parameter at a time.

Output layout (docs/checkpoints.md):
  DIR/state/      orbax PyTree {"params": tree} in our scanned layout (stacked on param_scan_axis)
  DIR/meta/       orbax JSON: format_version, step 0, config (our model keys, tokenizer_path, add_bos/add_eos),
                  tokenizer identity, source (Hugging Face path, model_type, config.json, files copied)
  DIR/model.yml   the same model keys, human-readable
  DIR/tokenizer.json | tokenizer.model | *.tiktoken, plus tokenizer_config.json etc. when present
`load_parameters_path=DIR` (train, decode) and `api.load(DIR)` take it by path alone.
"""

import functools
import os
import shutil
import time

import ml_dtypes
import numpy as np
import yaml

from MaxText import paths
from MaxText.config import ConfigError, load_config, model_config
from MaxText.checkpoint import orbax_io
from MaxText.conversion import hf_config, tokenizer_files
from MaxText.checkpoint.safetensors_io import SafetensorsReader
from MaxText.models import hf_mappings, registry
from MaxText.checkpoint import checkpointing

DTYPES = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}


def megabytes(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MB"


# Tensors a checkpoint may carry that are not parameters of the language model: buffers the model recomputes
# and, in multimodal Gemma 3 checkpoints, the vision tower and its projector (we take the language model);
# also DeepSeek V3's multi-token-prediction layer (hf_mappings.is_extra_layer).
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
IGNORED_PARTS = ("vision_tower.", "multi_modal_projector.")


def model_config_for(keys: dict):
    """The ModelConfig of our model keys (base.yml fills in the rest)."""
    cfg = load_config([os.path.join(paths.REPO_ROOT, "configs", "base.yml")], overlay=keys)
    return model_config(cfg)


def check_tensors(
    reader: SafetensorsReader, maps: list, tied: bool, where: str, skip=lambda name: False
) -> list:
    """Every expected tensor present with its expected shape, and nothing unexpected (ConfigError otherwise).
    Returns the names of the tensors that are skipped (vision tower, buffers, those `skip` names)."""
    expected = {name: m.hf_shape for m in maps for name in m.hf_names}
    present = set(reader.names())
    missing = sorted(set(expected) - present)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"{where}: tensor {missing[0]!r} is missing{more}")
    skipped = sorted(
        n
        for n in present - set(expected)
        if n.endswith(IGNORED_SUFFIXES) or any(p in n for p in IGNORED_PARTS) or skip(n)
    )
    ignorable = set(skipped) | ({n.head for n in hf_mappings.KNOWN_NAMES} if tied else set())
    extra = sorted(present - set(expected) - ignorable)
    if extra:
        raise ConfigError(
            f"{where}: unexpected tensor {extra[0]!r} (a feature this converter does not support)"
        )
    for name, shape in expected.items():
        got = reader.info(name).shape
        if tuple(got) != tuple(shape):
            raise ConfigError(
                f"{where}: tensor {name!r} has shape {list(got)}, config.json implies {list(shape)}"
            )
    return skipped


def _pieces(reader, m, scan_axis: int, dtype, progress):
    """Yields (index, array) pieces of map m's parameter, reading one Hugging Face tensor at a time (one
    layer's, or one expert's of a layer: expert tensors go straight to their expert-major slot)."""
    t0 = time.perf_counter()
    for i, name in enumerate(m.hf_names):
        piece = m.to_ours(reader.get(name)).astype(dtype, copy=False)
        yield m.index(i, scan_axis), piece
        del piece
    shape = m.stacked_shape(scan_axis)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    source = m.hf_names[0] if len(m.hf_names) == 1 else f"{m.hf_names[0]} .. {m.hf_names[-1]}"
    progress(
        f"{m.name} {np.dtype(dtype).name}{list(shape)} <- {source} ({len(m.hf_names)} tensor(s), "
        f"{megabytes(nbytes)}, {time.perf_counter() - t0:.1f}s)"
    )


class Progress:
    """Numbers the lines of a conversion: "[k/total] message"."""

    def __init__(self, total: int, log):
        self.total, self.log, self.done = total, log, 0

    def __call__(self, message: str) -> None:
        self.done += 1
        self.log(f"[{self.done:>{len(str(self.total))}}/{self.total}] {message}")


def _dtype_name(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ConfigError(f"weights of dtype {name} are not supported; pass --dtype float32|bfloat16|float16")
    return name


def _tokenizer_keys(staging: str, output: str, family: str) -> tuple:
    """(config keys for the tokenizer, its identity) from the copied tokenizer files; ({}, None) without one."""
    main = tokenizer_files.main_file(staging)
    if main is None:
        return {}, None
    from MaxText.input_pipeline import tokenizers  # pylint: disable=import-outside-toplevel

    tok = tokenizers.load_tokenizer(os.path.join(staging, main), registry.family(family).add_bos_eos)
    keys = {"tokenizer_path": os.path.join(output, main), "add_bos": tok.add_bos, "add_eos": tok.add_eos}
    return keys, tok.identity()


def prepare_output(output: str, overwrite: bool) -> str:
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)) and not overwrite:
        raise ConfigError(f"--output {output} exists and is not empty; remove it or pass --overwrite")
    staging = f"{output}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


def finish_output(staging: str, output: str) -> None:
    if os.path.isdir(output):
        shutil.rmtree(output)
    elif os.path.exists(output):
        os.remove(output)
    os.replace(staging, output)


def convert(hf_dir: str, output: str, dtype: str | None = None, overwrite: bool = False, log=print) -> dict:
    """Converts the Hugging Face model in `hf_dir` into a MaxText checkpoint directory `output`.

    dtype: None keeps the published dtype of each tensor; else every tensor is cast to it. Returns the meta
    dict written. Raises ConfigError (one line) for unsupported models, missing or misshapen tensors.
    """
    hf_dir, output = os.path.abspath(hf_dir), os.path.abspath(output)
    where = os.path.join(hf_dir, "config.json")
    hf = hf_config.read_config(hf_dir)
    keys = hf_mappings.hf_config_to_keys(hf, where)
    try:
        reader = SafetensorsReader(hf_dir)
    except FileNotFoundError as e:
        raise ConfigError(f"{e} (only safetensors checkpoints convert)") from None
    cfg = model_config_for(keys)
    keys["param_scan_axis"] = axis = cfg.param_scan_axis
    maps = hf_mappings.tensor_maps(keys["decoder_block"], cfg, hf_mappings.detect_names(reader.names()))
    extra = functools.partial(hf_mappings.is_extra_layer, keys["decoder_block"], cfg)
    skipped = check_tensors(reader, maps, keys["logits_via_embedding"], where, extra)
    target = DTYPES[dtype] if dtype else None
    keys["weight_dtype"] = _dtype_name(target or reader.info(maps[0].hf_names[0]).dtype)

    staging = prepare_output(output, overwrite)
    t0 = time.perf_counter()
    total = sum(int(np.prod(m.stacked_shape(axis))) for m in maps)
    log(
        f"converting {hf_dir} ({hf['model_type']}, {total:,} params, {len(reader.files)} file(s)) -> {output}"
    )
    if skipped:
        log(f"skipping {len(skipped)} tensor(s) outside the language model, e.g. {skipped[0]}")
    tree, progress = {}, Progress(len(maps), log)
    for m in maps:
        leaf_dtype = target or reader.info(m.hf_names[0]).dtype
        node = tree.setdefault("params", {})
        for key in m.path[:-1]:
            node = node.setdefault(key, {})
        node[m.path[-1]] = orbax_io.LazyArray(
            m.stacked_shape(axis),
            leaf_dtype,
            functools.partial(_pieces, reader, m, axis, leaf_dtype, progress),
        )
    orbax_io.save_streaming(os.path.join(staging, "state"), tree)

    copied = tokenizer_files.copy(hf_dir, staging, tokenizer_files.present(hf_dir))
    tok_keys, identity = _tokenizer_keys(staging, output, keys["decoder_block"])
    keys.update(tok_keys)
    meta = {
        "format_version": checkpointing.FORMAT_VERSION,
        "step": 0,
        "config": keys,
        "tokenizer": identity,
        "source": {"format": "huggingface", "path": hf_dir, "model_type": hf["model_type"], "hf_config": hf,
                   "files": copied},
    }  # fmt: skip
    orbax_io.save_json(os.path.join(staging, "meta"), meta)
    with open(os.path.join(staging, "model.yml"), "w", encoding="utf-8") as f:
        f.write(f"# Model keys of the checkpoint converted from {hf_dir} (MaxText.convert hf_to_maxtext).\n")
        f.write(
            "# They apply automatically with load_parameters_path=<this directory>; the command line wins.\n"
        )
        yaml.safe_dump(keys, f, sort_keys=False)
    finish_output(staging, output)
    log(
        f"done in {time.perf_counter() - t0:.1f}s: {output} (tokenizer: {tok_keys.get('tokenizer_path', 'none')})"
    )
    return meta
