"""Parameter name and layout mapping between Hugging Face checkpoints and our parameter tree.

Every mapping is "transpose and/or reshape": a Hugging Face tensor (torch Linear weights are [out, in]) is
transposed to [in, out] when `transpose`, then reshaped to our per-layer shape; the inverse reshapes to the
transposed Hugging Face shape and transposes back. Values are never changed, so a round trip is bit-exact.
Per-layer tensors are stacked along `param_scan_axis` (docs/checkpoints.md has the table).

Axis legend: D model dim, N query heads, K kv heads, H head dim, F MLP dim, V vocab, L layers.
"""

import dataclasses

import numpy as np

from MaxText.config import ConfigError


@dataclasses.dataclass(frozen=True)
class ParamMap:
    """One parameter: our tree path, the Hugging Face name (with {i} for per-layer tensors) and shapes."""

    path: tuple  # our path under "params", e.g. ("decoder", "layers", "mlp", "wo", "kernel")
    hf_name: str  # e.g. "model.layers.{i}.mlp.down_proj.weight"
    hf_shape: tuple  # per layer
    shape: tuple  # ours, per layer (without the layer axis)
    transpose: bool
    per_layer: bool

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        """One Hugging Face tensor -> our per-layer array."""
        return (x.T if self.transpose else x).reshape(self.shape)

    def to_hf(self, y: np.ndarray) -> np.ndarray:
        """Our per-layer array -> the Hugging Face tensor (inverse of to_ours)."""
        if self.transpose:
            return y.reshape(self.hf_shape[::-1]).T
        return y.reshape(self.hf_shape)

    def hf_names(self, num_layers: int) -> list:
        return [self.hf_name.format(i=i) for i in range(num_layers)] if self.per_layer else [self.hf_name]

    def stacked_shape(self, num_layers: int, scan_axis: int) -> tuple:
        if not self.per_layer:
            return self.shape
        return self.shape[:scan_axis] + (num_layers,) + self.shape[scan_axis:]

    @property
    def name(self) -> str:
        return "/".join(self.path)


def _llama(keys: dict) -> list:
    d, n, k, h = (
        keys["base_emb_dim"],
        keys["base_num_query_heads"],
        keys["base_num_kv_heads"],
        keys["head_dim"],
    )
    f, v = keys["base_mlp_dim"], keys["vocab_size"]
    attn, mlp = ("decoder", "layers", "self_attention"), ("decoder", "layers", "mlp")
    hf_attn, hf_mlp = "model.layers.{i}.self_attn", "model.layers.{i}.mlp"
    maps = [
        ParamMap(("token_embedder", "embedding"), "model.embed_tokens.weight", (v, d), (v, d), False, False),
        ParamMap(
            ("decoder", "layers", "pre_self_attention_layer_norm", "scale"),
            "model.layers.{i}.input_layernorm.weight", (d,), (d,), False, True,
        ),
        ParamMap(attn + ("query", "kernel"), f"{hf_attn}.q_proj.weight", (n * h, d), (d, n, h), True, True),
        ParamMap(attn + ("key", "kernel"), f"{hf_attn}.k_proj.weight", (k * h, d), (d, k, h), True, True),
        ParamMap(attn + ("value", "kernel"), f"{hf_attn}.v_proj.weight", (k * h, d), (d, k, h), True, True),
        ParamMap(attn + ("out", "kernel"), f"{hf_attn}.o_proj.weight", (d, n * h), (n, h, d), True, True),
        ParamMap(
            ("decoder", "layers", "post_self_attention_layer_norm", "scale"),
            "model.layers.{i}.post_attention_layernorm.weight", (d,), (d,), False, True,
        ),
        ParamMap(mlp + ("wi_0", "kernel"), f"{hf_mlp}.gate_proj.weight", (f, d), (d, f), True, True),
        ParamMap(mlp + ("wi_1", "kernel"), f"{hf_mlp}.up_proj.weight", (f, d), (d, f), True, True),
        ParamMap(mlp + ("wo", "kernel"), f"{hf_mlp}.down_proj.weight", (d, f), (f, d), True, True),
        ParamMap(("decoder", "decoder_norm", "scale"), "model.norm.weight", (d,), (d,), False, False),
    ]  # fmt: skip
    if not keys["logits_via_embedding"]:
        maps.append(
            ParamMap(("decoder", "logits_dense", "kernel"), "lm_head.weight", (v, d), (d, v), True, False)
        )
    return maps


# decoder_block -> mapping builder.
FAMILIES = {"llama2": _llama, "mistral": _llama}
# Buffers some checkpoints carry that are recomputed by the model, not parameters.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def param_maps(keys: dict) -> list:
    """The ParamMaps of a model described by our model keys."""
    block = keys["decoder_block"]
    if block not in FAMILIES:
        raise ConfigError(
            f"decoder_block={block!r} has no checkpoint mapping (supported: {', '.join(FAMILIES)})"
        )
    return FAMILIES[block](keys)
