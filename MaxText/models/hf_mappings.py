"""Hugging Face <-> MaxText parameters for the llama block and the gemma, gemma2, gemma3 (text), qwen3,
mixtral and qwen3_moe families. Every mapping is a transpose and/or reshape of one Hugging Face tensor, stacked along
param_scan_axis for scanned stacks; values are never changed, so a round trip is bit-exact in any dtype.

API (family = our decoder_block name; cfg = a ModelConfig):
  tensor_maps(family, cfg) -> [TensorMap]: each of our parameters with the Hugging Face tensors it is built
      from, in stacking order (what a streaming converter needs: one parameter at a time).
  hf_to_params(family, hf_state_dict, cfg) -> params tree (numpy; scan_layers=false layout when cfg says so).
  params_to_hf(family, params, cfg) -> {hf name: numpy array} (scanned params).
  hf_config_to_keys(hf_config) -> our model keys for a config.json dict (transformers 5.x or older names).

Layer placement: Hugging Face layer i is unit i // m, sublayer i % m of the first stack (m layers per unit),
then the following stacks continue the count (Gemma 3's "tail"). Axis legend: D model, N query heads,
K kv heads, H head dim, F MLP, V vocab, E experts.

MoE layers: Hugging Face files store one tensor per expert (model.layers.{i}.<moe>.experts.{j}.<proj>.weight);
ours stack them expert-major into [E, D, F] / [E, F, D] per layer (TensorMap.experts = E), then along the
layer axis like every other parameter. The router's [E, D] weight is our gate/kernel [D, E].
"""

import dataclasses
from typing import NamedTuple

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
    "mixtral": (LLAMA_NORMS, _HF_NORMS_LLAMA),
    "qwen3_moe": (LLAMA_NORMS, _HF_NORMS_LLAMA),
    "deepseek2": (LLAMA_NORMS, _HF_NORMS_LLAMA),
    "deepseek3": (LLAMA_NORMS, _HF_NORMS_LLAMA),
}
# MoE family -> (module holding the router and experts, names of the experts' gate, up and down projections).
_HF_MOE = {
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
    "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "deepseek2": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "deepseek3": ("mlp", ("gate_proj", "up_proj", "down_proj")),
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
    experts: int = 0  # > 0: hf_names holds E consecutive expert tensors per layer, stacked on a leading axis
    hf_shape: tuple = None  # the Hugging Face shape when it cannot be told from the module name

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        return (x.T if self.transpose else x).reshape(self.shape)

    def assemble(self, arrays: list, scan_axis: int) -> np.ndarray:
        """Our parameter from its tensors, each already to_ours'ed, in hf_names order."""
        if self.experts:
            e = self.experts
            arrays = [np.stack(arrays[i : i + e], axis=0) for i in range(0, len(arrays), e)]
        return np.stack(arrays, axis=scan_axis) if self.stacked else arrays[0]

    def split(self, value: np.ndarray, scan_axis: int) -> list:
        """Inverse of assemble: our parameter -> one array per hf_names entry (our layout; see to_hf)."""
        value = np.asarray(value)
        units = len(self.hf_names) // max(self.experts, 1)
        per_layer = [np.take(value, u, axis=scan_axis) for u in range(units)] if self.stacked else [value]
        if self.experts:
            return [x[j] for x in per_layer for j in range(self.experts)]
        return per_layer

    def to_hf(self, y: np.ndarray, hf_shape: tuple) -> np.ndarray:
        """Inverse of to_ours for a tensor whose Hugging Face shape is hf_shape."""
        return y.reshape(hf_shape[::-1]).T if self.transpose else y.reshape(hf_shape)


class _Entry(NamedTuple):
    """One parameter of a layer: our path inside the layer, the Hugging Face suffix inside model.layers.{i}
    (with {j} for the expert), our per-layer (per-expert) shape, transpose, experts, Hugging Face shape."""

    rel: tuple
    suffix: str
    shape: tuple
    transpose: bool
    experts: int = 0
    hf_shape: tuple = None


def _moe_entries(family: str, cfg: ModelConfig) -> list:
    d, e, f = cfg.emb_dim, cfg.num_experts, cfg.moe_mlp_dim
    module, (gate, up, down) = _HF_MOE[family]
    entries = [
        _Entry(("mlp", "gate", "kernel"), f"{module}.gate.weight", (d, e), True, 0, (e, d)),
        _Entry(("mlp", "wi_0"), f"{module}.experts.{{j}}.{gate}.weight", (d, f), True, e, (f, d)),
        _Entry(("mlp", "wi_1"), f"{module}.experts.{{j}}.{up}.weight", (d, f), True, e, (f, d)),
        _Entry(("mlp", "wo"), f"{module}.experts.{{j}}.{down}.weight", (f, d), True, e, (d, f)),
    ]
    if cfg.moe_score_correction_bias:
        entries.append(
            _Entry(("mlp", "score_correction_bias"), f"{module}.gate.e_score_correction_bias", (e,), False)
        )
    if cfg.num_shared_experts:
        fs = cfg.num_shared_experts * f
        shared = (
            ("wi_0", gate, (d, fs), (fs, d)),
            ("wi_1", up, (d, fs), (fs, d)),
            ("wo", down, (fs, d), (d, fs)),
        )
        for ours, theirs, shape, hf_shape in shared:
            entries.append(
                _Entry(
                    ("mlp", "shared_experts", ours, "kernel"),
                    f"{module}.shared_experts.{theirs}.weight",
                    shape,
                    True,
                    0,
                    hf_shape,
                )
            )
    return entries


def _mla_entries(cfg: ModelConfig) -> list:
    """Multi-head latent attention (layers/mla.py): Hugging Face's fused [out, in] projections, reshaped."""
    d, n, q, r = cfg.emb_dim, cfg.num_query_heads, cfg.q_lora_rank, cfg.kv_lora_rank
    p, o, v = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    att = "self_attention"
    if q:
        query = [
            _Entry((att, "wq_a", "kernel"), "self_attn.q_a_proj.weight", (d, q), True, 0, (q, d)),
            _Entry((att, "q_norm", "scale"), "self_attn.q_a_layernorm.weight", (q,), False),
            _Entry(
                (att, "wq_b", "kernel"), "self_attn.q_b_proj.weight", (q, n, p + o), True, 0, (n * (p + o), q)
            ),
        ]
    else:
        query = [
            _Entry(
                (att, "query", "kernel"), "self_attn.q_proj.weight", (d, n, p + o), True, 0, (n * (p + o), d)
            )
        ]
    return query + [
        _Entry(
            (att, "wkv_a", "kernel"), "self_attn.kv_a_proj_with_mqa.weight", (d, r + o), True, 0, (r + o, d)
        ),
        _Entry((att, "kv_norm", "scale"), "self_attn.kv_a_layernorm.weight", (r,), False),
        _Entry(
            (att, "wkv_b", "kernel"), "self_attn.kv_b_proj.weight", (r, n, p + v), True, 0, (n * (p + v), r)
        ),
        _Entry((att, "out", "kernel"), "self_attn.o_proj.weight", (n, v, d), True, 0, (d, n * v)),
    ]


def _layer_entries(family: str, cfg: ModelConfig, moe: bool = False) -> list:
    """The _Entry rows of one layer (a MoE layer when `moe`)."""
    d, n, k, h, f = cfg.emb_dim, cfg.num_query_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    ours, hf = FAMILY_NORMS[family]
    entries = [
        (("self_attention", "query", "kernel"), "self_attn.q_proj.weight", (d, n, h), True),
        (("self_attention", "key", "kernel"), "self_attn.k_proj.weight", (d, k, h), True),
        (("self_attention", "value", "kernel"), "self_attn.v_proj.weight", (d, k, h), True),
        (("self_attention", "out", "kernel"), "self_attn.o_proj.weight", (n, h, d), True),
    ]
    if family in registry.MLA_BLOCKS:
        entries = _mla_entries(cfg)
    if moe:
        entries += _moe_entries(family, cfg)
    else:
        entries += [
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
    return [entry if isinstance(entry, _Entry) else _Entry(*entry) for entry in entries]


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
    first = 0
    for stack in registry.stacks(cfg):
        entries = _layer_entries(family, cfg, moe=getattr(stack.block, "MOE", False))
        subs = stack.sublayers or (None,)
        for j, sub in enumerate(subs):
            prefix = ("decoder", stack.name) + ((sub,) if sub else ())
            layers = [first + u * len(subs) + j for u in range(stack.length)]
            for e in entries:
                experts = range(e.experts) if e.experts else (0,)
                names = tuple(f"model.layers.{i}.{e.suffix.format(j=x)}" for i in layers for x in experts)
                maps.append(
                    TensorMap(prefix + e.rel, names, e.shape, e.transpose, True, e.experts, e.hf_shape)
                )
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
        _set(params, m.path, m.assemble(arrays, cfg.param_scan_axis))
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
        for name, y in zip(m.hf_names, m.split(_get(params, m.path), cfg.param_scan_axis)):
            module = name.split(".")[-2]
            out[name] = m.to_hf(y, m.hf_shape or hf_shapes.get(module, m.shape))
    return out


# Hugging Face model_type -> our decoder_block (the families whose configs this module reads).
MODEL_TYPES = {
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
    "qwen3": "qwen3",
    "mixtral": "mixtral",
    "qwen3_moe": "qwen3_moe",
    "deepseek_v2": "deepseek2",
    "deepseek_v3": "deepseek3",
}
# Families whose config.json reads like Llama's (silu, untied embeddings by default, no norm offset).
_LLAMA_LIKE = ("qwen3", "mixtral", "qwen3_moe", "deepseek2", "deepseek3")
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
    if rope_type not in ("default", "linear", "llama3", "yarn"):
        raise ConfigError(
            f"{where}: rope_type={rope_type!r} is not supported (default, linear, llama3, yarn)"
        )
    keys = {"rope_type": rope_type, "rope_max_timescale": float(params["rope_theta"])}
    if rope_type == "yarn":
        keys.update(
            rope_scaling_factor=float(params["factor"]),
            rope_original_max_position_embeddings=int(params["original_max_position_embeddings"]),
            rope_yarn_beta_fast=float(params.get("beta_fast") or 32.0),
            rope_yarn_beta_slow=float(params.get("beta_slow") or 1.0),
            rope_yarn_mscale=float(params.get("mscale") or 0.0),
            rope_yarn_mscale_all_dim=float(params.get("mscale_all_dim") or 0.0),
        )
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


def _moe_keys(hf: dict, block: str, where: str) -> dict:
    """The MoE keys of a mixtral / qwen3_moe config.json (every layer MoE); {} for dense families."""
    if block == "mixtral":
        return {
            "num_experts": hf["num_local_experts"],
            "num_experts_per_tok": hf["num_experts_per_tok"],
            "base_moe_mlp_dim": hf["intermediate_size"],
            "norm_topk_prob": True,  # Mixtral always renormalises the top-k probabilities
        }
    if block == "qwen3_moe":
        if hf.get("mlp_only_layers") or hf.get("decoder_sparse_step", 1) != 1:
            raise ConfigError(
                f"{where}: qwen3_moe with dense layers (mlp_only_layers, decoder_sparse_step) "
                "is not supported"
            )
        return {
            "num_experts": hf.get("num_experts") or hf["num_local_experts"],  # 5.x renames it
            "num_experts_per_tok": hf["num_experts_per_tok"],
            "base_moe_mlp_dim": hf["moe_intermediate_size"],
            "norm_topk_prob": bool(hf.get("norm_topk_prob", False)),
        }
    if block in ("deepseek2", "deepseek3"):
        return _deepseek_keys(hf, block, where)
    return {}


def _deepseek_keys(hf: dict, block: str, where: str) -> dict:
    """MLA and MoE keys of a deepseek_v2 / deepseek_v3 config.json."""
    if hf.get("moe_layer_freq", 1) != 1:
        raise ConfigError(f"{where}: moe_layer_freq={hf['moe_layer_freq']} is not supported (expected 1)")
    keys = {
        "q_lora_rank": int(hf.get("q_lora_rank") or 0),
        "kv_lora_rank": hf["kv_lora_rank"],
        "qk_nope_head_dim": hf["qk_nope_head_dim"],
        "qk_rope_head_dim": hf["qk_rope_head_dim"],
        "v_head_dim": hf["v_head_dim"],
        "head_dim": hf["qk_nope_head_dim"] + hf["qk_rope_head_dim"],
        "base_num_kv_heads": hf["num_attention_heads"],  # MLA has no separate kv heads
        "rope_interleave": bool(hf.get("rope_interleave", True)),  # V2 always rotates adjacent pairs
        "num_experts": hf["n_routed_experts"],
        "num_experts_per_tok": hf["num_experts_per_tok"],
        "base_moe_mlp_dim": hf["moe_intermediate_size"],
        "num_shared_experts": hf.get("n_shared_experts") or 0,
        "first_num_dense_layers": hf.get("first_k_dense_replace", 0),
        "routed_scaling_factor": float(hf.get("routed_scaling_factor", 1.0)),
    }
    if block == "deepseek3":
        return {
            **keys,
            "moe_score_func": "sigmoid",
            "moe_score_correction_bias": True,
            "moe_group_score": "top2_sum",
            "moe_n_group": hf.get("n_group", 1),
            "moe_topk_group": hf.get("topk_group", 1),
            "norm_topk_prob": bool(hf.get("norm_topk_prob", True)),
        }
    method = hf.get("topk_method", "greedy")
    if method not in ("greedy", "group_limited_greedy"):
        raise ConfigError(f"{where}: topk_method={method!r} is not supported (greedy, group_limited_greedy)")
    grouped = method == "group_limited_greedy"
    # V2's router never renormalises the top-k weights, whatever norm_topk_prob says.
    return {
        **keys,
        "moe_n_group": hf["n_group"] if grouped else 1,
        "moe_topk_group": hf["topk_group"] if grouped else 1,
    }


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
    act = hf.get(act_key) or hf.get("hidden_act") or ("silu" if block in _LLAMA_LIKE else "gelu_pytorch_tanh")
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
        "logits_via_embedding": bool(hf.get("tie_word_embeddings", block not in _LLAMA_LIKE)),
        "use_qk_norm": block in ("gemma3", "qwen3", "qwen3_moe"),
    }
    rope = _rope_parameters(hf)
    if block in _LLAMA_LIKE:
        if hf.get("use_sliding_window"):
            raise ConfigError(f"{where}: use_sliding_window=true is not supported for {block}")
        if block == "mixtral" and hf.get("sliding_window"):
            keys["sliding_window_size"] = int(hf["sliding_window"])
        return {**keys, **_rope_keys(rope, where), **_moe_keys(hf, block, where)}
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
