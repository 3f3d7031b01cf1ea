"""Loads a run configuration: base YAML (with `base_config` parents), then the model YAML, then CLI.

Usage from an entry point: `cfg = load_config(sys.argv[1:])`, where argv is `[yaml_path, key=value, ...]`.
"""

import dataclasses
import os
import time

import yaml

from MaxText import paths
from MaxText.config.errors import ConfigError, suggest
from MaxText.config.schema import SETTINGS, Config
from MaxText.config import validate

MODELS_DIR = os.path.join(paths.REPO_ROOT, "configs", "models")
_PATH_KEYS = ("tokenizer_path", "load_parameters_path")


def _read_yaml(path: str, seen=()) -> dict:
    """Reads a YAML file, following `base_config` to its parent (relative to the child file)."""
    resolved = paths.resolve(path)
    if not os.path.isfile(resolved):
        raise ConfigError(f"config file {path!r} not found (looked in {os.getcwd()} and {paths.REPO_ROOT})")
    if resolved in seen:
        raise ConfigError(f"config file {path!r}: base_config cycle through {' -> '.join(seen)}")
    try:
        with open(resolved, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path!r} is not UTF-8 text (byte {e.start}); expected YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r}: expected a mapping of key: value")
    parent = data.pop("base_config", None)
    if parent is None:
        return {k: (v, resolved) for k, v in data.items()}
    parent_path = parent if os.path.isabs(parent) else os.path.join(os.path.dirname(resolved), parent)
    merged = _read_yaml(parent_path, seen + (resolved,))
    merged.update({k: (v, resolved) for k, v in data.items()})
    return merged


def model_yaml_path(model_name: str) -> str:
    return os.path.join(MODELS_DIR, f"{model_name}.yml")


def available_models() -> list:
    return sorted(f[:-4] for f in os.listdir(MODELS_DIR) if f.endswith(".yml"))


def _parse_cli(args) -> dict:
    out = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r}: expected key=value")
        key, value = arg.split("=", 1)
        key = key.strip().lstrip("-")
        out[key] = value
    return out


def _check_known(key: str, source: str) -> None:
    if key not in SETTINGS:
        raise ConfigError(f"unknown key {key!r} ({source}){suggest(key, SETTINGS)}")


def load_config(argv, overlay=None) -> Config:
    """Builds and validates the Config. Raises ConfigError (one line) on any user mistake.

    overlay: {key: value} applied over the YAML files and under the command line (e.g. the model keys saved
    with a checkpoint).
    """
    if not argv or "=" in argv[0]:
        raise ConfigError("expected a config file first, e.g. configs/base.yml key=value ...")
    raw = _read_yaml(argv[0])
    cli = _parse_cli(argv[1:])
    for key in cli:
        _check_known(key, "command line")
    model_name = cli.get("model_name", raw.get("model_name", ("default", None))[0])
    if model_name and model_name != "default":
        path = model_yaml_path(model_name)
        if not os.path.isfile(path):
            raise ConfigError(
                f"model_name={model_name!r}: no file configs/models/{model_name}.yml"
                + suggest(model_name, available_models())
            )
        for key, (value, src) in _read_yaml(path).items():
            if key == "model_name":
                continue
            raw[key] = (value, src)

    values = {}
    for key, (value, src) in raw.items():
        _check_known(key, os.path.relpath(src))
        values[key] = validate.coerce(key, value, from_cli=False, source=os.path.relpath(src))
    for key, value in (overlay or {}).items():
        _check_known(key, "checkpoint config")
        values[key] = validate.coerce(key, value, from_cli=False, source="checkpoint config")
    for key, value in cli.items():
        values[key] = validate.coerce(key, value, from_cli=True, source="command line")
    missing = [k for k in SETTINGS if k not in values]
    if missing:
        raise ConfigError(f"config {argv[0]!r} lacks keys {missing}; start from configs/base.yml")
    values["model_name"] = model_name
    if not values["run_name"]:
        values["run_name"] = time.strftime("run_%Y%m%d_%H%M%S")
    for key in _PATH_KEYS:
        values[key] = paths.resolve(values[key])
    for key, value in values.items():
        validate.check_field(key, value)
    cfg = Config(**values)
    validate.check_cross_field(cfg)
    return cfg


def non_default_items(cfg: Config) -> dict:
    """The keys whose values differ from base.yml: a compact summary for the log."""
    base = {k: v for k, (v, _) in _read_yaml(os.path.join(paths.REPO_ROOT, "configs", "base.yml")).items()}
    out = {}
    for key, value in dataclasses.asdict(cfg).items():
        try:
            default = validate.coerce(key, base.get(key), from_cli=False, source="base.yml")
        except ConfigError:
            default = base.get(key)
        if key in _PATH_KEYS and default:
            default = paths.resolve(default)
        if value != default:
            out[key] = value
    return out


def save_config(cfg: Config, path: str) -> None:
    """Writes the resolved config as YAML (atomically, so a kill never leaves half a file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(dataclasses.asdict(cfg), f, sort_keys=False)
    os.replace(tmp, path)
