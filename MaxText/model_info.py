"""Model size and training cost, without allocating: python3 -m MaxText.model_info configs/base.yml
model_name=X [key=value ...]

The model is built abstractly (jax.eval_shape of its initialisation), so any size works on a laptop.
Prints exactly four lines:
  total_params: <int>                every parameter once (tied embeddings once; learned positions included)
  active_params: <int>               parameters used per token, embeddings included (= total for dense models;
                                     MoE layers count num_experts_per_tok of their routed experts)
  train_flops_per_token: <int>       analytic training FLOPs per token at max_target_length
  bytes_params_and_optimizer: <int>  parameters in weight_dtype + AdamW's mu and nu, counted in float32
                                     (8 bytes per parameter), ignoring the optimizer's scalar step count

FLOPs follow MaxText.training.flops (6 x matmul params + causal attention + logits, per token; biases,
norms and soft caps are not counted; MoE layers count the router, the top-k routed and the shared experts), except that a sliding window shortens attention only in the layers
that use it: Gemma 2/3's global layers attend over the whole sequence.
"""

import sys

import jax

from MaxText.config import exit_on_config_error, load_config, model_config
from MaxText.config.derived import ModelConfig
from MaxText.training import flops
from MaxText.models.transformer import init_params_boxed, make_model

ADAM_STATE_BYTES_PER_PARAM = 8  # mu and nu, float32 each


def _is_box(x) -> bool:
    return hasattr(x, "value")


def abstract_boxed_params(cfg: ModelConfig) -> dict:
    """The parameter tree as ShapeDtypeStructs in their logical-axis boxes (nothing allocated)."""
    model = make_model(cfg)
    return jax.eval_shape(lambda: init_params_boxed(model, jax.random.key(0)))


def abstract_params(cfg: ModelConfig) -> dict:
    """The parameter tree as ShapeDtypeStructs (nothing allocated)."""
    return jax.tree.map(lambda x: x.value if _is_box(x) else x, abstract_boxed_params(cfg), is_leaf=_is_box)


def active_size(leaf, cfg: ModelConfig) -> int:
    """Parameters of one boxed leaf that one token uses: a routed expert weight (logical axis "exp") is
    used by num_experts_per_tok of its num_experts experts; everything else fully."""
    size = int(leaf.value.size) if _is_box(leaf) else int(leaf.size)
    if _is_box(leaf) and "exp" in (leaf.names or ()):
        return size // cfg.num_experts * cfg.num_experts_per_tok
    return size


def train_flops_per_token(cfg: ModelConfig, length: int) -> float:
    """Analytic training FLOPs per token at sequence length `length` (formula in training/flops.py)."""
    return flops.train_flops_per_step(cfg, 1, length) / length


def model_info(cfg: ModelConfig, length: int) -> dict:
    """{"total_params", "active_params", "train_flops_per_token", "bytes_params_and_optimizer"} as ints."""
    boxed = jax.tree.leaves(abstract_boxed_params(cfg), is_leaf=_is_box)
    leaves = [x.value if _is_box(x) else x for x in boxed]
    total = sum(int(x.size) for x in leaves)
    param_bytes = sum(int(x.size) * x.dtype.itemsize for x in leaves)
    return {
        "total_params": total,
        "active_params": sum(active_size(x, cfg) for x in boxed),
        "train_flops_per_token": int(round(train_flops_per_token(cfg, length))),
        "bytes_params_and_optimizer": param_bytes + ADAM_STATE_BYTES_PER_PARAM * total,
    }


@exit_on_config_error
def main(argv) -> int:
    cfg = load_config(argv)
    for key, value in model_info(model_config(cfg), cfg.max_target_length).items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
