"""Hugging Face <-> MaxText parameters for every family with a Hugging Face checkpoint: llama2 (Llama 2 and
3), mistral, gemma, gemma2, gemma3 (text) and qwen3. Every mapping is a transpose and/or reshape of one
Hugging Face tensor, stacked along param_scan_axis for scanned stacks; values are never changed, so a round
trip is bit-exact in any dtype. The converter (MaxText.conversion), the parity tests and api.load all use it.

API (family = our decoder_block name; cfg = a ModelConfig):
  tensor_maps(family, cfg, names=HFNames()) -> [TensorMap]: each of our parameters with the Hugging Face
      tensors it is built from, in stacking order (what a streaming converter needs: one parameter at a time).
  hf_to_params(family, hf_state_dict, cfg) -> params tree (numpy; scan_layers=false layout when cfg says so).
  params_to_hf(family, params, cfg) -> {hf name: numpy array} (scanned params).
  hf_config_to_keys / keys_to_hf_config: config.json <-> our model keys (MaxText.models.hf_configs).

Adding a family: one row in LAYER_ENTRIES (the per-layer entry builders of its layers, e.g. attention, a
dense MLP and its norms; an MoE family adds a builder for its expert tensors), its norm names in
FAMILY_NORMS, and its config.json rows in hf_configs.

Layer placement: Hugging Face layer i is unit i // m, sublayer i % m of the first stack (m layers per unit),
then the following stacks continue the count (Gemma 3's "tail"). Axis legend: D model, N query heads,
K kv heads, H head dim, F MLP, V vocab.
"""

import dataclasses
import re

import numpy as np

from MaxText.config.derived import ModelConfig
from MaxText.config.errors import ConfigError
from MaxText.models import registry

# Re-exported: the config half of the mapping.
from MaxText.models.hf_configs import hf_config_to_keys, keys_to_hf_config  # pylint: disable=unused-import
from MaxText.models.transformer_layer import GEMMA_NORMS, LLAMA_NORMS

# Our norm slot -> the Hugging Face norm of that slot, per naming scheme. Llama-style checkpoints call the
# pre-MLP norm "post_attention_layernorm"; Gemma 2/3 use that name for the norm on the attention output.
_HF_NORMS_LLAMA = {"pre_attention": "input_layernorm", "pre_mlp": "post_attention_layernorm"}
_HF_NORMS_SANDWICH = {
    "pre_attention": "input_layernorm",
    "post_attention": "post_attention_layernorm",
    "pre_mlp": "pre_feedforward_layernorm",
    "post_mlp": "post_feedforward_layernorm",
}
# family -> (our norm names, Hugging Face norm names)
FAMILY_NORMS = {
    "llama2": (LLAMA_NORMS, _HF_NORMS_LLAMA),
    "mistral": (LLAMA_NORMS, _HF_NORMS_LLAMA),
    "qwen3": (LLAMA_NORMS, _HF_NORMS_LLAMA),
    "gemma": (GEMMA_NORMS, _HF_NORMS_LLAMA),
    "gemma2": (GEMMA_NORMS, _HF_NORMS_SANDWICH),
    "gemma3": (GEMMA_NORMS, _HF_NORMS_SANDWICH),
}


@dataclasses.dataclass(frozen=True)
class HFNames:
    """Where a checkpoint keeps the language model: `prefix` + "layers.{i}...", "embed_tokens", "norm", and
    the output head. Multimodal Gemma 3 checkpoints nest it ("language_model.model." or
    "model.language_model.")."""

    prefix: str = "model."
    head: str = "lm_head.weight"


# Prefixes of the language model in the checkpoints we read, most common first.
KNOWN_NAMES = (
    HFNames(),
    HFNames("language_model.model.", "language_model.lm_head.weight"),
    HFNames("model.language_model.", "lm_head.weight"),
)


def detect_names(tensor_names) -> HFNames:
    """The HFNames whose embedding tensor is present (the plain layout when none is)."""
    present = set(tensor_names)
    return next((n for n in KNOWN_NAMES if f"{n.prefix}embed_tokens.weight" in present), HFNames())


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One of our parameters. `hf_names` lists its Hugging Face tensors in stacking order (one when not
    stacked), each of shape `hf_shape`; each is transposed when `transpose`, then reshaped to `shape` (ours,
    per layer). A stacked parameter's layer axis is param_scan_axis and path[1] is its stack's name."""

    path: tuple
    hf_names: tuple
    hf_shape: tuple
    shape: tuple
    transpose: bool
    stacked: bool

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        return (x.T if self.transpose else x).reshape(self.shape)

    def to_hf(self, y: np.ndarray) -> np.ndarray:
        """Inverse of to_ours."""
        return y.reshape(self.hf_shape[::-1]).T if self.transpose else y.reshape(self.hf_shape)

    def stacked_shape(self, scan_axis: int) -> tuple:
        if not self.stacked:
            return self.shape
        return self.shape[:scan_axis] + (len(self.hf_names),) + self.shape[scan_axis:]

    @property
    def name(self) -> str:
        return "/".join(self.path)

    def unscanned_path(self, unit: int) -> tuple:
        """The path of unit `unit` in the scan_layers=false tree ("layers" -> "layers_3")."""
        return self.path[:1] + (f"{self.path[1]}_{unit}",) + self.path[2:]


def attention_entries(_family: str, cfg: ModelConfig) -> list:
    """Layer entries: (our path inside a layer, Hugging Face suffix inside layers.{i}, HF shape, our shape,
    transpose). torch Linear weights are [out, in]; ours are [in, out] split into heads."""
    d, n, k, h = cfg.emb_dim, cfg.num_query_heads, cfg.num_kv_heads, cfg.head_dim
    entries = [
        (("self_attention", "query", "kernel"), "self_attn.q_proj.weight", (n * h, d), (d, n, h), True),
        (("self_attention", "key", "kernel"), "self_attn.k_proj.weight", (k * h, d), (d, k, h), True),
        (("self_attention", "value", "kernel"), "self_attn.v_proj.weight", (k * h, d), (d, k, h), True),
        (("self_attention", "out", "kernel"), "self_attn.o_proj.weight", (d, n * h), (n, h, d), True),
    ]
    if cfg.use_qk_norm:
        entries.append(
            (("self_attention", "query_norm", "scale"), "self_attn.q_norm.weight", (h,), (h,), False)
        )
        entries.append(
            (("self_attention", "key_norm", "scale"), "self_attn.k_norm.weight", (h,), (h,), False)
        )
    return entries


def gated_mlp_entries(_family: str, cfg: ModelConfig) -> list:
    """The gated MLP: gate (wi_0), up (wi_1), down (wo)."""
    d, f = cfg.emb_dim, cfg.mlp_dim
    return [
        (("mlp", "wi_0", "kernel"), "mlp.gate_proj.weight", (f, d), (d, f), True),
        (("mlp", "wi_1", "kernel"), "mlp.up_proj.weight", (f, d), (d, f), True),
        (("mlp", "wo", "kernel"), "mlp.down_proj.weight", (d, f), (f, d), True),
    ]


def norm_entries(family: str, cfg: ModelConfig) -> list:
    """The layer's norms that the config enables, named the family's Hugging Face way."""
    ours, hf = FAMILY_NORMS[family]
    enabled = {"pre_attention", "pre_mlp"}
    enabled |= {"post_attention"} if cfg.use_post_attn_norm else set()
    enabled |= {"post_mlp"} if cfg.use_post_ffw_norm else set()
    entries = []
    for slot in sorted(enabled):
        if slot not in hf:
            raise ConfigError(f"decoder_block={family!r}: Hugging Face checkpoints have no {slot} norm")
        d = cfg.emb_dim
        entries.append(((getattr(ours, slot), "scale"), f"{hf[slot]}.weight", (d,), (d,), False))
    return entries


_DENSE = (attention_entries, gated_mlp_entries, norm_entries)
# family -> the entry builders of one of its layers.
LAYER_ENTRIES = {family: _DENSE for family in FAMILY_NORMS}


def tensor_maps(family: str, cfg: ModelConfig, names: HFNames = HFNames()) -> list:
    """Every parameter of the scanned tree (see the module docstring)."""
    if family not in LAYER_ENTRIES:
        raise ConfigError(
            f"decoder_block={family!r} has no Hugging Face mapping ({', '.join(LAYER_ENTRIES)})"
        )
    d, v, pre = cfg.emb_dim, cfg.vocab_size, names.prefix
    maps = [
        TensorMap(
            ("token_embedder", "embedding"), (f"{pre}embed_tokens.weight",), (v, d), (v, d), False, False
        )
    ]
    entries = [e for build in LAYER_ENTRIES[family] for e in build(family, cfg)]
    first = 0
    for stack in registry.stacks(cfg):
        subs = stack.sublayers or (None,)
        for j, sub in enumerate(subs):
            prefix = ("decoder", stack.name) + ((sub,) if sub else ())
            layers = [first + u * len(subs) + j for u in range(stack.length)]
            for rel, suffix, hf_shape, shape, transpose in entries:
                hf_names = tuple(f"{pre}layers.{i}.{suffix}" for i in layers)
                maps.append(TensorMap(prefix + rel, hf_names, hf_shape, shape, transpose, True))
        first += stack.length * len(subs)
    maps.append(
        TensorMap(("decoder", "decoder_norm", "scale"), (f"{pre}norm.weight",), (d,), (d,), False, False)
    )
    if not cfg.logits_via_embedding:
        maps.append(
            TensorMap(("decoder", "logits_dense", "kernel"), (names.head,), (v, d), (d, v), True, False)
        )
    return maps


_LAYER = re.compile(r"layers\.(\d+)\.")


def file_order(hf_name: str) -> tuple:
    """Sort key giving the usual file order: embeddings, then layer by layer, then final norm and head."""
    match = _LAYER.search(hf_name)
    if match:
        return (1, int(match.group(1)), hf_name)
    return (0 if "embed_tokens" in hf_name else 2, 0, hf_name)


def to_numpy(t) -> np.ndarray:
    """A torch tensor (bfloat16 included) or array -> numpy, same dtype and values."""
    if hasattr(t, "detach"):
        import torch  # only present when the caller passes torch tensors

        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    return np.asarray(t)


def _set(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def hf_to_params(family: str, hf_state_dict: dict, cfg: ModelConfig) -> dict:
    """Hugging Face tensors {name: tensor} -> our params tree. Raises ConfigError naming a missing tensor."""
    params = {}
    for m in tensor_maps(family, cfg, detect_names(hf_state_dict)):
        missing = [name for name in m.hf_names if name not in hf_state_dict]
        if missing:
            raise ConfigError(f"Hugging Face checkpoint lacks tensor {missing[0]!r} (for {m.name})")
        arrays = [m.to_ours(to_numpy(hf_state_dict[name])) for name in m.hf_names]
        value = np.stack(arrays, axis=cfg.param_scan_axis) if m.stacked else arrays[0]
        _set(params, m.path, value)
    if not cfg.scan_layers:
        params = _unstack(params, cfg)
    return params


def _unstack(params: dict, cfg: ModelConfig) -> dict:
    decoder = dict(params["decoder"])
    for stack in registry.stacks(cfg):
        stacked = decoder.pop(stack.name)
        for u in range(stack.length):
            decoder[f"{stack.name}_{u}"] = _map(
                lambda x, u=u: np.take(x, u, axis=cfg.param_scan_axis), stacked
            )
    return {**params, "decoder": decoder}


def _map(fn, tree):
    return {k: _map(fn, v) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)


def params_to_hf(family: str, params: dict, cfg: ModelConfig) -> dict:
    """Scanned params -> {Hugging Face name: numpy array} (inverse of hf_to_params)."""
    out = {}
    for m in tensor_maps(family, cfg):
        value = np.asarray(_get(params, m.path))
        if m.stacked:
            per_layer = [np.take(value, u, axis=cfg.param_scan_axis) for u in range(len(m.hf_names))]
        else:
            per_layer = [value]
        out.update({name: m.to_hf(y) for name, y in zip(m.hf_names, per_layer)})
    return out
