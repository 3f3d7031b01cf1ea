"""Hugging Face <-> MaxText parameters for every family with a Hugging Face checkpoint: llama2 (Llama 2 and
3), mistral, gemma, gemma2, gemma3 (text), qwen3, olmo3, and the MoE families mixtral, qwen3_moe, deepseek2 and
deepseek3. Every mapping is a transpose and/or reshape of one
Hugging Face tensor, stacked along param_scan_axis for scanned stacks; values are never changed, so a round
trip is bit-exact in any dtype. The converter (MaxText.conversion), the parity tests and api.load all use it.

API (family = our decoder_block name; cfg = a ModelConfig):
  tensor_maps(family, cfg, names=HFNames()) -> [TensorMap]: each of our parameters with the Hugging Face
      tensors it is built from, in stacking order (what a streaming converter needs: one parameter at a time).
  hf_to_params(family, hf_state_dict, cfg) -> params tree (numpy; scan_layers=false layout when cfg says so).
  params_to_hf(family, params, cfg) -> {hf name: numpy array} (scanned params).
  hf_config_to_keys / keys_to_hf_config: config.json <-> our model keys (MaxText.models.hf_configs).

A family's spec (FamilySpec.hf) names the entry builders of its dense layers (e.g. attention, a gated MLP
and its norms) and of its MoE layers, its norm names and its experts' module. Each stack picks the builders
of its block (block.MOE), so DeepSeek's dense first layers and its MoE layers map differently.

Layer placement: Hugging Face layer i is unit i // m, sublayer i % m of the first stack (m layers per unit),
then the following stacks continue the count (Gemma 3's "tail"). Axis legend: D model, N query heads,
K kv heads, H head dim, F MLP, V vocab, E experts.

MoE layers: Hugging Face files store one tensor per expert (layers.{i}.<moe>.experts.{j}.<proj>.weight); ours
stack them expert-major into [E, D, F] / [E, F, D] per layer (TensorMap.experts = E), then along the layer
axis like every other parameter, so the converter still writes one Hugging Face tensor at a time
(TensorMap.index). The router's [E, D] weight is our gate/kernel [D, E].
"""

import dataclasses
import re

import numpy as np

from MaxText.config.derived import ModelConfig
from MaxText.config.errors import ConfigError
from MaxText.models import registry

# Re-exported: the config half of the mapping.
from MaxText.models.hf_configs import hf_config_to_keys, keys_to_hf_config  # pylint: disable=unused-import

# Our norm slot -> the Hugging Face norm of that slot, per naming scheme. Llama-style checkpoints call the
# pre-MLP norm "post_attention_layernorm"; Gemma 2/3 use that name for the norm on the attention output.
HF_NORMS_LLAMA = {"pre_attention": "input_layernorm", "pre_mlp": "post_attention_layernorm"}
HF_NORMS_SANDWICH = {
    "pre_attention": "input_layernorm",
    "post_attention": "post_attention_layernorm",
    "pre_mlp": "pre_feedforward_layernorm",
    "post_mlp": "post_feedforward_layernorm",
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
    per layer, or per expert when `experts`). A stacked parameter's layer axis is param_scan_axis and path[1]
    is its stack's name. An expert parameter (experts = E > 0) lists E consecutive expert tensors per layer
    and holds them expert-major: [E, *shape] per layer."""

    path: tuple
    hf_names: tuple
    hf_shape: tuple
    shape: tuple
    transpose: bool
    stacked: bool
    experts: int = 0

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        return (x.T if self.transpose else x).reshape(self.shape)

    def to_hf(self, y: np.ndarray) -> np.ndarray:
        """Inverse of to_ours."""
        return y.reshape(self.hf_shape[::-1]).T if self.transpose else y.reshape(self.hf_shape)

    @property
    def units(self) -> int:
        """Layers (units) of the stack: the length of the layer axis."""
        return len(self.hf_names) // max(self.experts, 1)

    def stacked_shape(self, scan_axis: int) -> tuple:
        layer = ((self.experts,) if self.experts else ()) + self.shape
        if not self.stacked:
            return layer
        return layer[:scan_axis] + (self.units,) + layer[scan_axis:]

    def index(self, i: int, scan_axis: int, stacked: bool = True) -> tuple:
        """Where hf_names[i] goes in our parameter: stacked on scan_axis, or in one unit's array when not
        `stacked` (scan_layers=false). Expert tensors go to their expert's row, expert-major."""
        unit, expert = divmod(i, max(self.experts, 1))
        layer = ([expert] if self.experts else []) + [slice(None)] * len(self.shape)
        if self.stacked and stacked:
            return tuple(layer[:scan_axis] + [unit] + layer[scan_axis:])
        return tuple(layer)

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
        # One scale per head dim, or one over the whole projection (qk_norm_across_heads: [N*H], [K*H]).
        q_norm, k_norm = ((n * h,), (k * h,)) if cfg.qk_norm_across_heads else ((h,), (h,))
        entries.append(
            (("self_attention", "query_norm", "scale"), "self_attn.q_norm.weight", q_norm, q_norm, False)
        )
        entries.append(
            (("self_attention", "key_norm", "scale"), "self_attn.k_norm.weight", k_norm, k_norm, False)
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
    ours, hf = registry.family(family).hf.norms
    enabled = {"pre_attention", "pre_mlp"} if cfg.use_pre_norms else set()
    enabled |= {"post_attention"} if cfg.use_post_attn_norm else set()
    enabled |= {"post_mlp"} if cfg.use_post_ffw_norm else set()
    entries = []
    for slot in sorted(enabled):
        if slot not in hf:
            raise ConfigError(f"decoder_block={family!r}: Hugging Face checkpoints have no {slot} norm")
        d = cfg.emb_dim
        entries.append(((getattr(ours, slot), "scale"), f"{hf[slot]}.weight", (d,), (d,), False))
    return entries


def moe_entries(family: str, cfg: ModelConfig) -> list:
    """The router, the routed experts (a sixth field E: one Hugging Face tensor per expert, "{j}" in the
    suffix), DeepSeek V3's score-correction bias and the shared experts (one fused MLP of width S * F)."""
    d, e, f = cfg.emb_dim, cfg.num_experts, cfg.moe_mlp_dim
    module, (gate, up, down) = registry.family(family).hf.moe_module
    entries = [
        (("mlp", "gate", "kernel"), f"{module}.gate.weight", (e, d), (d, e), True),
        (("mlp", "wi_0"), f"{module}.experts.{{j}}.{gate}.weight", (f, d), (d, f), True, e),
        (("mlp", "wi_1"), f"{module}.experts.{{j}}.{up}.weight", (f, d), (d, f), True, e),
        (("mlp", "wo"), f"{module}.experts.{{j}}.{down}.weight", (d, f), (f, d), True, e),
    ]
    if cfg.moe_score_correction_bias:
        entries.append(
            (("mlp", "score_correction_bias"), f"{module}.gate.e_score_correction_bias", (e,), (e,), False)
        )
    if cfg.num_shared_experts:
        s = cfg.num_shared_experts * f
        shared = f"{module}.shared_experts"
        entries += [
            (("mlp", "shared_experts", "wi_0", "kernel"), f"{shared}.{gate}.weight", (s, d), (d, s), True),
            (("mlp", "shared_experts", "wi_1", "kernel"), f"{shared}.{up}.weight", (s, d), (d, s), True),
            (("mlp", "shared_experts", "wo", "kernel"), f"{shared}.{down}.weight", (d, s), (s, d), True),
        ]
    return entries


def mla_entries(_family: str, cfg: ModelConfig) -> list:
    """Multi-head latent attention (layers/mla.py): Hugging Face's fused [out, in] projections, reshaped.
    Q query rank (0: no low-rank query), R kv rank, P nope and O rope head parts, U value head."""
    d, n, q, r = cfg.emb_dim, cfg.num_query_heads, cfg.q_lora_rank, cfg.kv_lora_rank
    p, o, u = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    att, hf = "self_attention", "self_attn"
    if q:
        query = [
            ((att, "wq_a", "kernel"), f"{hf}.q_a_proj.weight", (q, d), (d, q), True),
            ((att, "q_norm", "scale"), f"{hf}.q_a_layernorm.weight", (q,), (q,), False),
            ((att, "wq_b", "kernel"), f"{hf}.q_b_proj.weight", (n * (p + o), q), (q, n, p + o), True),
        ]
    else:
        query = [((att, "query", "kernel"), f"{hf}.q_proj.weight", (n * (p + o), d), (d, n, p + o), True)]
    return query + [
        ((att, "wkv_a", "kernel"), f"{hf}.kv_a_proj_with_mqa.weight", (r + o, d), (d, r + o), True),
        ((att, "kv_norm", "scale"), f"{hf}.kv_a_layernorm.weight", (r,), (r,), False),
        ((att, "wkv_b", "kernel"), f"{hf}.kv_b_proj.weight", (n * (p + u), r), (r, n, p + u), True),
        ((att, "out", "kernel"), f"{hf}.o_proj.weight", (d, n * u), (n, u, d), True),
    ]


DENSE = (attention_entries, gated_mlp_entries, norm_entries)  # a Llama-style dense layer
MOE = (attention_entries, moe_entries, norm_entries)  # ... with routed experts in place of the MLP


def _hf_spec(family: str):
    spec = registry.family(family).hf
    if spec is None:
        mapped = [s.name for s in registry.all_families() if s.hf]
        raise ConfigError(f"decoder_block={family!r} has no Hugging Face mapping ({', '.join(mapped)})")
    return spec


def tensor_maps(family: str, cfg: ModelConfig, names: HFNames = HFNames()) -> list:
    """Every parameter of the scanned tree (see the module docstring)."""
    hf = _hf_spec(family)
    d, v, pre = cfg.emb_dim, cfg.vocab_size, names.prefix
    maps = [
        TensorMap(
            ("token_embedder", "embedding"), (f"{pre}embed_tokens.weight",), (v, d), (v, d), False, False
        )
    ]
    first = 0
    for stack in registry.stacks(cfg):
        builders = hf.moe_layer_entries if getattr(stack.block, "MOE", False) else hf.layer_entries
        entries = [e for build in builders for e in build(family, cfg)]
        subs = stack.sublayers or (None,)
        for j, sub in enumerate(subs):
            prefix = ("decoder", stack.name) + ((sub,) if sub else ())
            layers = [first + u * len(subs) + j for u in range(stack.length)]
            for rel, suffix, hf_shape, shape, transpose, *experts in entries:
                e = experts[0] if experts else 0
                hf_names = tuple(
                    f"{pre}layers.{i}.{suffix.format(j=x)}" for i in layers for x in (range(e) if e else (0,))
                )
                maps.append(TensorMap(prefix + rel, hf_names, hf_shape, shape, transpose, True, e))
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


def is_extra_layer(family: str, cfg: ModelConfig, hf_name: str) -> bool:
    """Whether hf_name is a layer past num_hidden_layers that our model does not build, in a family whose
    checkpoints hold such layers (HFSpec.extra_layers: DeepSeek V3's multi-token-prediction module); skipped
    on conversion."""
    match = _LAYER.search(hf_name)
    return _hf_spec(family).extra_layers and bool(match) and int(match.group(1)) >= cfg.num_decoder_layers


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
        value = None
        for i, name in enumerate(m.hf_names):
            piece = m.to_ours(to_numpy(hf_state_dict[name]))
            if value is None:
                value = np.empty(m.stacked_shape(cfg.param_scan_axis), piece.dtype)
            value[m.index(i, cfg.param_scan_axis)] = piece
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
        for i, name in enumerate(m.hf_names):
            out[name] = m.to_hf(value[m.index(i, cfg.param_scan_axis)])
    return out
