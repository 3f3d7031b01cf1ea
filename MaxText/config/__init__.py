"""Run configuration: YAML + key=value overrides -> a typed, validated `Config`."""

from MaxText.config.errors import ConfigError, exit_on_config_error, EXIT_CONFIG_ERROR
from MaxText.config.loader import load_config, save_config, non_default_items
from MaxText.config.schema import Config
from MaxText.config.derived import ModelConfig, model_config, run_dir

__all__ = [
    "Config",
    "ConfigError",
    "EXIT_CONFIG_ERROR",
    "ModelConfig",
    "exit_on_config_error",
    "load_config",
    "model_config",
    "non_default_items",
    "run_dir",
    "save_config",
]
