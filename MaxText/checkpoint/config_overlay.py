"""Configs for runs that start from a checkpoint: the checkpoint's saved model keys apply automatically.

Precedence: command line > checkpoint's model keys > model YAML > base.yml. So `decode run_name=R`,
`train load_parameters_path=DIR` and converted Hugging Face checkpoints need no repeated model flags.
"""

import os

from MaxText.checkpoint import checkpointing
from MaxText.config.derived import MODEL_KEYS, run_dir
from MaxText.config.errors import ConfigError
from MaxText.config.loader import load_config


def saved_model_keys(path: str) -> dict:
    """The model keys recorded in a checkpoint's meta (empty when it has none)."""
    try:
        saved = checkpointing.read_meta(path).get("config", {})
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    return {k: saved[k] for k in MODEL_KEYS if k in saved}


ADAPTER_KEYS = ("lora_rank", "lora_alpha", "lora_target_modules")


def adapter_keys(lora_path: str) -> dict:
    """The adapter shape (lora_rank, lora_alpha, lora_target_modules) of a LoRA run or step (lora_path=)."""
    if not lora_path:
        return {}
    if not os.path.exists(lora_path):
        raise ConfigError(f"lora_path={lora_path!r}: no such run or step directory")
    saved = saved_model_keys(lora_path)
    if saved.get("lora_rank", 0) <= 0:
        raise ConfigError(f"lora_path={lora_path!r}: not a LoRA checkpoint (its run has lora_rank=0)")
    return {k: saved[k] for k in ADAPTER_KEYS if k in saved}


def load_config_from_checkpoint(argv, require_checkpoint: bool):
    """(config, checkpoint path or None). The checkpoint is load_parameters_path, else run_name's directory.

    require_checkpoint: decode needs one (ConfigError when missing); train only uses it when present.
    """
    first = load_config(argv)
    path = first.load_parameters_path or (run_dir(first) if require_checkpoint else "")
    if not path:
        return first, None
    if not os.path.exists(path):
        key = "load_parameters_path" if first.load_parameters_path else "run_name"
        value = first.load_parameters_path or first.run_name
        raise ConfigError(
            f"{key}={value!r}: no checkpoint at {path}; train first or give load_parameters_path"
        )
    overlay = dict(saved_model_keys(path), **adapter_keys(first.lora_path))
    return load_config(argv, overlay=overlay), path
