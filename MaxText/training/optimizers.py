"""AdamW with warmup + cosine schedule, a weight-decay mask and global-norm clipping (optax)."""

import jax
import optax

from MaxText.config import Config
from MaxText.config.derived import schedule_steps

# Parameters whose last path element is one of these get no weight decay: norm scales and biases (the MoE
# router's score-correction bias has no gradient; decay alone would shrink it to zero).
_NO_DECAY = ("scale", "bias", "score_correction_bias")


def learning_rate_schedule(cfg: Config) -> optax.Schedule:
    """Linear warmup from 0 to learning_rate, then cosine decay to final_fraction x learning_rate."""
    total = max(schedule_steps(cfg), 1)
    warmup = int(round(cfg.warmup_steps_fraction * total))
    final = cfg.learning_rate * cfg.cosine_learning_rate_final_fraction
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total, warmup + 1),
        end_value=final,
    )


def decay_mask(params):
    """True for parameters that take weight decay (matrices and embeddings; not norms or biases)."""

    def decays(path, _):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", str(last)))
        return name not in _NO_DECAY

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """The full update rule. Clipping happens before Adam, on the accumulated gradient."""
    parts = []
    if cfg.gradient_clipping_threshold > 0:
        parts.append(optax.clip_by_global_norm(cfg.gradient_clipping_threshold))
    parts.append(
        optax.adamw(
            learning_rate=learning_rate_schedule(cfg),
            b1=cfg.adam_b1,
            b2=cfg.adam_b2,
            eps=cfg.adam_eps,
            eps_root=cfg.adam_eps_root,
            weight_decay=cfg.adam_weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*parts)
