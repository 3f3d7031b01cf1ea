"""Learning-rate schedules: a linear warm-up from 0 to learning_rate, then the decay lr_schedule_type names.

With T = schedule length (learning_rate_schedule_steps, default steps), W = round(warmup_steps_fraction x T),
peak = learning_rate and final = learning_rate_final_fraction x peak, after the warm-up:
- cosine: peak -> final along half a cosine over [W, T] (optax.warmup_cosine_decay_schedule);
- linear: peak -> final linearly over [W, T];
- constant: peak;
- inverse_sqrt: peak x sqrt(max(W, 1) / t), never below final;
- wsd: peak until T - D, then peak -> final over the last D = round(wsd_decay_steps_fraction x T) steps, in
  the shape wsd_decay_style names: linear, cosine (half a cosine) or 1-sqrt (final + (peak - final) x
  (1 - sqrt(progress))).
"""

import dataclasses

import jax.numpy as jnp
import optax

from MaxText.config import Config, ConfigError
from MaxText.config.derived import schedule_steps


def final_fraction(cfg: Config) -> float:
    """learning_rate_final_fraction, or its older name cosine_learning_rate_final_fraction when that is set."""
    if cfg.cosine_learning_rate_final_fraction < 0:
        return cfg.learning_rate_final_fraction
    default = next(f.default for f in dataclasses.fields(Config) if f.name == "learning_rate_final_fraction")
    if cfg.learning_rate_final_fraction not in (default, cfg.cosine_learning_rate_final_fraction):
        raise ConfigError(
            f"cosine_learning_rate_final_fraction={cfg.cosine_learning_rate_final_fraction}: is the older name "
            f"of learning_rate_final_fraction={cfg.learning_rate_final_fraction}; set only one of them"
        )
    return cfg.cosine_learning_rate_final_fraction


def _decay(cfg: Config, peak: float, final: float, warmup: int, total: int):
    """The schedule after the warm-up, as a function of the step count t >= warmup."""
    kind = cfg.lr_schedule_type
    if kind == "linear":
        return lambda t: peak + (final - peak) * jnp.clip((t - warmup) / max(total - warmup, 1), 0.0, 1.0)
    if kind == "constant":
        return lambda t: jnp.full(jnp.shape(t), peak, jnp.float32)
    if kind == "inverse_sqrt":
        return lambda t: jnp.maximum(peak * jnp.sqrt(max(warmup, 1) / jnp.maximum(t, max(warmup, 1))), final)
    if kind == "wsd":
        length = int(round(cfg.wsd_decay_steps_fraction * total))
        start = max(total - length, warmup)
        shape = {
            "linear": lambda p: 1.0 - p,
            "cosine": lambda p: 0.5 * (1.0 + jnp.cos(jnp.pi * p)),
            "1-sqrt": lambda p: 1.0 - jnp.sqrt(p),
        }[cfg.wsd_decay_style]
        return lambda t: final + (peak - final) * shape(
            jnp.clip((t - start) / max(total - start, 1), 0.0, 1.0)
        )
    raise ValueError(f"lr_schedule_type={kind!r}")  # the config's choices make this unreachable


def learning_rate_schedule(cfg: Config) -> optax.Schedule:
    """step count -> learning rate, as the module docstring says."""
    total = max(schedule_steps(cfg), 1)
    warmup = int(round(cfg.warmup_steps_fraction * total))
    peak = cfg.learning_rate
    final = peak * final_fraction(cfg)
    if cfg.lr_schedule_type == "cosine":  # optax's own; the default, unchanged
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=max(total, warmup + 1),
            end_value=final,
        )
    after = _decay(cfg, peak, final, warmup, total)

    def schedule(count):
        t = jnp.asarray(count, jnp.float32)
        return jnp.where(t < warmup, peak * t / max(warmup, 1), after(t)).astype(jnp.float32)

    return schedule


def relative_step(count):
    """Adafactor's relative step size min(1e-2, 1 / sqrt(step)), step counted from 1."""
    return jnp.minimum(1e-2, 1.0 / jnp.sqrt(jnp.asarray(count, jnp.float32) + 1.0))
