"""Values derived from the run config, each in a small named function.

`ModelConfig` is the slice of the run config that the model needs. Layers get it (or a few of its fields),
never the whole run config, so a model can be built without a training run around it.
"""

import dataclasses
import os

from MaxText.config.schema import REMAT_TENSORS, SETTINGS, Config


def _frozen(value):
    """Lists become tuples, so a ModelConfig is hashable (a Linen attribute, a jit static argument)."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _model_fields() -> list:
    """(name, type, field) of each ModelConfig field, for make_dataclass."""
    # pylint: disable=invalid-field-call
    fields = []
    for s in SETTINGS.values():
        if s.model:
            kind = tuple if s.type is list else s.type
            fields.append((s.model, kind, dataclasses.field(default=_frozen(s.default))))
    # remat_policy=custom: (tensor, remat|device|offload) pairs of the per-tensor keys.
    fields.append(("remat_custom", tuple, dataclasses.field(default=())))
    # Not a setting: the kernels this model runs on its target (kernels/plan.py), set by models.make_model.
    fields.append(("kernel_plan", object, dataclasses.field(default=None)))
    # Not a setting: each batch row applies its own LoRA adapter (several served at once; layers/lora.py).
    fields.append(("lora_rows", bool, dataclasses.field(default=False)))
    return fields


def _replace(self, **changes):
    return dataclasses.replace(self, **changes)


# Everything that determines the model's parameters and numerics: the settings declared with `model`, under
# their model names (base_emb_dim -> emb_dim), with base.yml's defaults. Hashable, so it can be a Linen attr.
ModelConfig = dataclasses.make_dataclass(
    "ModelConfig",
    _model_fields(),
    frozen=True,
    namespace={
        "replace": _replace,
        "__doc__": "The model slice of a run config (the settings schema.py tags `model`).",
        "__module__": __name__,
    },
)

# Run-config keys that define a trained model (with its tokenizer): the settings declared `saved`. A
# checkpoint's saved values of these keys are applied when loading it for decode, so users need not repeat
# them; the command line still wins.
MODEL_KEYS = tuple(name for name, s in SETTINGS.items() if s.saved)


def model_config(cfg: Config) -> ModelConfig:
    """The model slice of a run config. The `base_` prefixes are MaxText's key names for the same dims."""
    values = {s.model: _frozen(getattr(cfg, name)) for name, s in SETTINGS.items() if s.model}
    return ModelConfig(**values, remat_custom=tuple((t, getattr(cfg, t)) for t in REMAT_TENSORS))


def run_dir(cfg: Config) -> str:
    """`<base_output_directory>/<run_name>`, absolute."""
    return os.path.abspath(os.path.join(cfg.base_output_directory, cfg.run_name))


def global_batch_size(cfg: Config, num_devices: int) -> int:
    """Rows per optimizer step: per_device_batch_size x devices (fractional per-device sizes allowed)."""
    return int(round(cfg.per_device_batch_size * num_devices))


def schedule_steps(cfg: Config) -> int:
    """Length of the warmup+cosine schedule; defaults to `steps`."""
    return cfg.steps if cfg.learning_rate_schedule_steps == -1 else cfg.learning_rate_schedule_steps
