"""`MaxText.convert quantize`: a float checkpoint -> one holding int8 kernels and their scales, for serving.

  python3 -m MaxText.convert quantize configs/base.yml load_parameters_path=SRC \
      save_quantized_params_path=DST quantization=int8w   # or int8

Every DenseGeneral kernel becomes int8 with a float32 `kernel_scale` per output channel (layers/
quantizations.py); embeddings, norms, biases and MoE experts stay as they are. DST is a checkpoint directory
(DST/0/{state, data_iter, meta}) whose saved config sets quantization and checkpoint_is_quantized=true, so
`MaxText.decode` / `MaxText.serve` / `api.load` take it with load_parameters_path=DST alone and generate
what quantizing the float checkpoint on the fly generates.
"""

import os

import jax

from MaxText.config import ConfigError
from MaxText.checkpoint.config_overlay import load_config_from_checkpoint
from MaxText.layers.quantizations import STORED_MODES, quantize_params
from MaxText.parallel import mesh as mesh_lib


def quantize_checkpoint(argv, log=print) -> str:
    """Runs the conversion for a config command line; returns the written directory."""
    # pylint: disable=import-outside-toplevel
    from MaxText.inference.session import abstract_params
    from MaxText.checkpoint import checkpointing

    cfg, path = load_config_from_checkpoint(argv, require_checkpoint=True)
    dst = cfg.save_quantized_params_path
    if not dst:
        raise ConfigError("save_quantized_params_path='': expected the directory to write")
    if cfg.quantization not in STORED_MODES:
        raise ConfigError(f"quantization={cfg.quantization!r}: expected one of {', '.join(STORED_MODES)}")
    if cfg.checkpoint_is_quantized:
        raise ConfigError(f"load_parameters_path={path}: already quantized (checkpoint_is_quantized=true)")
    if os.path.exists(dst) and os.listdir(dst):
        raise ConfigError(f"save_quantized_params_path={dst!r}: exists and is not empty")
    mesh, rules = mesh_lib.make_mesh(cfg), mesh_lib.axis_rules(cfg)
    _, source = abstract_params(cfg, mesh, rules)
    _, target = abstract_params(cfg.replace(checkpoint_is_quantized=True), mesh, rules)
    params = checkpointing.load_params(path, source, ema=cfg.load_ema_params)
    shardings = jax.tree.map(lambda a: a.sharding, target)
    quantized = jax.jit(lambda p: quantize_params(p, target), out_shardings=shardings)(params)
    meta = checkpointing.read_meta(path)
    meta["config"] = {
        **meta.get("config", {}),
        "quantization": cfg.quantization,
        "checkpoint_is_quantized": True,
    }
    meta["quantized_from"] = os.path.abspath(path)
    ckpt = checkpointing.Checkpointer(dst, 1, async_save=False)
    ckpt.save(0, {"params": quantized}, {}, meta)
    ckpt.close()
    before = sum(x.nbytes for x in jax.tree.leaves(params))
    after = sum(x.nbytes for x in jax.tree.leaves(quantized))
    log(
        f"quantize: {path} -> {dst} ({cfg.quantization}): {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB"
    )
    return dst
