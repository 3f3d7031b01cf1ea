"""Hugging Face <-> MaxText parameters for the llama block and the gemma, gemma2, gemma3 (text) and qwen3
families. Every mapping is a transpose and/or reshape of one Hugging Face tensor, stacked along
param_scan_axis for scanned stacks; values are never changed, so a round trip is bit-exact in any dtype.

API (family = our decoder_block name; cfg = a ModelConfig):
  tensor_maps(family, cfg) -> [TensorMap]: each of our parameters with the Hugging Face tensors it is built
      from, in stacking order (what a streaming converter needs: one parameter at a time).
  hf_to_params(family, hf_state_dict, cfg) -> params tree (numpy; scan_layers=false layout when cfg says so).
  params_to_hf(family, params, cfg) -> {hf name: numpy array} (scanned params).
  hf_config_to_keys(hf_config) -> our model keys for a config.json dict (transformers 5.x or older names).

Layer placement: Hugging Face layer i is unit i // m, sublayer i % m of the first stack (m layers per unit),
then the following stacks continue the count (Gemma 3's "tail"). Axis legend: D model, N query heads,
K kv heads, H head dim, F MLP, V vocab.
"""

import dataclasses

import numpy as np

from MaxText.config.derived import ModelConfig
from MaxText.config.errors import ConfigError
from MaxText.models import registry
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
class TensorMap:
    """One of our parameters. `hf_names` lists its Hugging Face tensors in stacking order (one when not
    stacked); each is transposed when `transpose`, then reshaped to `shape` (ours, per layer)."""

    path: tuple
    hf_names: tuple
    shape: tuple
    transpose: bool
    stacked: bool

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        return (x.T if self.transpose else x).reshape(self.shape)

    def to_hf(self, y: np.ndarray, hf_shape: tuple) -> np.ndarray:
        """Inverse of to_ours for a tensor whose Hugging Face shape is hf_shape."""
        return y.reshape(hf_shape[::-1]).T if self.transpose else y.reshape(hf_shape)


def _layer_entries(family: str, cfg: ModelConfig) -> list:
    """(our path inside a layer, Hugging Face suffix inside model.layers.{i}, shape, transpose)."""
    d, n, k, h, f = cfg.emb_dim, cfg.num_query_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    ours, hf = FAMILY_NORMS[family]
    entries = [
        (("self_attention", "query", "kernel"), "self_attn.q_proj.weight", (d, n, h), True),
        (("self_attention", "key", "kernel"), "self_attn.k_proj.weight", (d, k, h), True),
        (("self_attention", "value", "kernel"), "self_attn.v_proj.weight", (d, k, h), True),
        (("self_attention", "out", "kernel"), "self_attn.o_proj.weight", (n, h, d), True),
        (("mlp", "wi_0", "kernel"), "mlp.gate_proj.weight", (d, f), True),
        (("mlp", "wi_1", "kernel"), "mlp.up_proj.weight", (d, f), True),
        (("mlp", "wo", "kernel"), "mlp.down_proj.weight", (f, d), True),
    ]
    if cfg.use_qk_norm:
        entries.append((("self_attention", "query_norm", "scale"), "self_attn.q_norm.weight", (h,), False))
        entries.append((("self_attention", "key_norm", "scale"), "self_attn.k_norm.weight", (h,), False))
    enabled = {"pre_attention", "pre_mlp"}
    enabled |= {"post_attention"} if cfg.use_post_attn_norm else set()
    enabled |= {"post_mlp"} if cfg.use_post_ffw_norm else set()
    for slot in sorted(enabled):
        if slot not in hf:
            raise ConfigError(f"decoder_block={family!r}: Hugging Face checkpoints have no {slot} norm")
        entries.append(((getattr(ours, slot), "scale"), f"{hf[slot]}.weight", (d,), False))
    return entries


def tensor_maps(family: str, cfg: ModelConfig) -> list:
    """Every parameter of the scanned tree (see the module docstring)."""
    if family not in FAMILY_NORMS:
        raise ConfigError(f"decoder_block={family!r} has no Hugging Face mapping ({', '.join(FAMILY_NORMS)})")
    d, v = cfg.emb_dim, cfg.vocab_size
    maps = [
        TensorMap(("token_embedder", "embedding"), ("model.embed_tokens.weight",), (v, d), False, False),
        TensorMap(("decoder", "decoder_norm", "scale"), ("model.norm.weight",), (d,), False, False),
    ]
    if not cfg.logits_via_embedding:
        maps.append(
            TensorMap(("decoder", "logits_dense", "kernel"), ("lm_head.weight",), (d, v), True, False)
        )
    entries = _layer_entries(family, cfg)
    first = 0
    for stack in registry.stacks(cfg):
        subs = stack.sublayers or (None,)
        for j, sub in enumerate(subs):
            prefix = ("decoder", stack.name) + ((sub,) if sub else ())
            layers = [first + u * len(subs) + j for u in range(stack.length)]
            for rel, suffix, shape, transpose in entries:
                names = tuple(f"model.layers.{i}.{suffix}" for i in layers)
                maps.append(TensorMap(prefix + rel, names, shape, transpose, True))
        first += stack.length * len(subs)
    return maps


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
    for m in tensor_maps(family, cfg):
        missing = [name for name in m.hf_names if name not in hf_state_dict]
        if missing:
            raise ConfigError(f"Hugging Face checkpoint lacks tensor {missing[0]!r} (for {'/'.join(m.path)})")
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
    d, n, k, h, f, v = (
        cfg.emb_dim, cfg.num_query_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    )  # fmt: skip
    hf_shapes = {
        "q_proj": (n * h, d), "k_proj": (k * h, d), "v_proj": (k * h, d), "o_proj": (d, n * h),
        "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f), "lm_head": (v, d),
    }  # fmt: skip
    out = {}
    for m in tensor_maps(family, cfg):
        value = np.asarray(_get(params, m.path))
        if m.stacked:
            per_layer = [np.take(value, u, axis=cfg.param_scan_axis) for u in range(len(m.hf_names))]
        else:
            per_layer = [value]
        for name, y in zip(m.hf_names, per_layer):
            module = name.split(".")[-2]
            out[name] = m.to_hf(y, hf_shapes.get(module, m.shape))
    return out


# Hugging Face model_type -> our decoder_block (the families whose configs this module reads).
MODEL_TYPES = {
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
    "qwen3": "qwen3",
}
_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "relu": "relu",
}


def _rope_keys(params: dict, where: str) -> dict:
    """Our rope keys for one transformers 5.x rope_parameters dict."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise ConfigError(f"{where}: rope_type={rope_type!r} is not supported (default, linear, llama3)")
    keys = {"rope_type": rope_type, "rope_max_timescale": float(params["rope_theta"])}
    if rope_type == "linear":
        keys["rope_scaling_factor"] = float(params["factor"])
    if rope_type == "llama3":
        keys.update(
            rope_scaling_factor=float(params["factor"]),
            rope_low_freq_factor=float(params["low_freq_factor"]),
            rope_high_freq_factor=float(params["high_freq_factor"]),
            rope_original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    return keys


def _rope_parameters(hf: dict) -> dict:
    """rope_parameters in 5.x form; older files keep rope_theta / rope_scaling / rope_local_base_freq on top."""
    if hf.get("rope_parameters"):
        return dict(hf["rope_parameters"])
    params = {**(hf.get("rope_scaling") or {}), "rope_theta": hf.get("rope_theta", 10000.0)}
    if hf.get("model_type", "").startswith("gemma3"):
        local = {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 10000.0)}
        return {"full_attention": params, "sliding_attention": local}
    return params


def _layer_pattern(hf: dict, where: str) -> int:
    """P such that layer i is global iff (i + 1) % P == 0, from layer_types (or sliding_window_pattern)."""
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if not types:
        return int(hf.get("sliding_window_pattern") or (2 if hf["model_type"] == "gemma2" else 6))
    p = types.index("full_attention") + 1 if "full_attention" in types else 0
    expected = ["full_attention" if p and (i + 1) % p == 0 else "sliding_attention" for i in range(n)]
    if not p or list(types) != expected:
        raise ConfigError(
            f"{where}: layer_types is not a repeating pattern of sliding layers then one full layer"
        )
    return p


def hf_config_to_keys(hf: dict, where: str = "config.json") -> dict:
    """Our model keys for a gemma / gemma2 / gemma3(_text) / qwen3 config.json dict. Raises ConfigError for
    an unsupported model or feature, naming the field."""
    if hf.get("model_type") == "gemma3" and "text_config" in hf:  # multimodal: the language model
        hf = {"model_type": "gemma3_text", **hf["text_config"]}
    block = MODEL_TYPES.get(hf.get("model_type"))
    if block is None:
        raise ConfigError(
            f"{where}: model_type {hf.get('model_type')!r} is not one of {', '.join(MODEL_TYPES)}"
        )
    if hf.get("attention_bias"):
        raise ConfigError(f"{where}: attention_bias=true is not supported for {hf['model_type']}")
    # What transformers 5.x's MLP reads: Gemma 2/3 use hidden_activation, Gemma (1) and Qwen 3 hidden_act.
    act_key = "hidden_activation" if block in ("gemma2", "gemma3") else "hidden_act"
    act = hf.get(act_key) or hf.get("hidden_act") or ("silu" if block == "qwen3" else "gelu_pytorch_tanh")
    if act not in _ACTIVATIONS:
        raise ConfigError(f"{where}: hidden_act={act!r} is not supported ({', '.join(_ACTIVATIONS)})")
    heads = hf["num_attention_heads"]
    keys = {
        "decoder_block": block,
        "base_emb_dim": hf["hidden_size"],
        "base_num_query_heads": heads,
        "base_num_kv_heads": hf.get("num_key_value_heads") or heads,
        "base_mlp_dim": hf["intermediate_size"],
        "base_num_decoder_layers": hf["num_hidden_layers"],
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "vocab_size": hf["vocab_size"],
        "mlp_activations": [_ACTIVATIONS[act], "linear"],
        "normalization_layer_epsilon": float(hf.get("rms_norm_eps", 1e-6)),
        "logits_via_embedding": bool(hf.get("tie_word_embeddings", block != "qwen3")),
        "use_qk_norm": block in ("gemma3", "qwen3"),
    }
    rope = _rope_parameters(hf)
    if block == "qwen3":
        if hf.get("use_sliding_window"):
            raise ConfigError(f"{where}: use_sliding_window=true is not supported for qwen3")
        return {**keys, **_rope_keys(rope, where)}
    keys.update(normalization_scale_offset=1.0, scale_embeddings_by_sqrt_dim=True)
    if block == "gemma":
        return {**keys, **_rope_keys(rope, where)}
    keys.update(
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or keys["head_dim"]),
        attn_logits_soft_cap=float(hf.get("attn_logit_softcapping") or 0.0) if block == "gemma2" else 0.0,
        final_logits_soft_cap=float(hf.get("final_logit_softcapping") or 0.0),
        sliding_window_size=int(hf.get("sliding_window") or 0),
        sliding_window_pattern=_layer_pattern(hf, where),
    )
    if block == "gemma2":
        return {**keys, **_rope_keys(rope, where)}
    local = _rope_keys(rope["sliding_attention"], f"{where} (sliding_attention)")
    if local["rope_type"] != "default":
        raise ConfigError(f"{where}: rope scaling on sliding_attention layers is not supported")
    keys["local_rope_max_timescale"] = local["rope_max_timescale"]
    return {**keys, **_rope_keys(rope["full_attention"], f"{where} (full_attention)")}
