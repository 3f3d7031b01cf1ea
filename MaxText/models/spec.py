"""What a model family is, in one object: `FamilySpec`. Each family module registers its specs (module
attribute `FAMILIES`), and everything that depends on the family reads them through `models.registry`:
config validation (traits and refusals), conversion (the Hugging Face config and tensor mappings), the
tokenizer's BOS/EOS defaults, model_info and the FLOP count. No code outside a family's own module checks
the family's name. docs/adding_a_family.md walks through writing one.
"""

import dataclasses
from typing import Callable, NamedTuple, Optional


class Stack(NamedTuple):
    """A run of identical scanned units. `block` is a Linen module class; `length` units of it.

    sublayers: names of the layers inside one unit, each with its own KV cache (() = the unit is one layer).
    global_layers: for each sublayer (or the one layer), whether it attends globally rather than through
    the sliding window; used for FLOP counts.
    """

    name: str
    block: type
    length: int
    sublayers: tuple = ()
    global_layers: tuple = (False,)


@dataclasses.dataclass(frozen=True)
class Traits:
    """Architectural features that config validation and the FLOP count key on.

    moe: the family has routed-expert layers (it needs num_experts > 0; other families need 0).
    mla: every layer uses multi-head latent attention (kv_lora_rank > 0; the decode cache is the latent).
    local_global: the scanned unit is a group of sliding_window_pattern layers, the last one global (it
      needs sliding_window_pattern >= 1; other families need 0).
    """

    moe: bool = False
    mla: bool = False
    local_global: bool = False


@dataclasses.dataclass(frozen=True)
class HFSpec:
    """How the family looks in Hugging Face transformers (5.x), both ways.

    model_type / architecture: what config.json says (written on export, matched on import; `aliases` are
    other model_types read as this family, with `text_config` unwrapping a multimodal config first).
    act_key / default_act: the field transformers' MLP reads its activation from, and its default.
    tied_default: tie_word_embeddings when config.json omits it. fixed: our keys the architecture implies
    (set on import, checked on export).
    keys_from_hf(hf, where) -> our keys of the family's own features; fields_to_hf(keys) -> the inverse.
    norms: (our NormNames, {our norm slot: Hugging Face norm module}).
    layer_entries / moe_layer_entries: the tensor-entry builders of a dense / an MoE layer
      (models/hf_mappings.py); moe_module: (module holding router and experts, (gate, up, down) names).
    extra_layers: checkpoints hold layers past num_hidden_layers that the model does not build (skipped).
    """

    model_type: str
    architecture: str
    act_key: str
    default_act: str
    tied_default: bool
    fixed: dict
    keys_from_hf: Callable[[dict, str], dict]
    fields_to_hf: Callable[[dict], dict]
    norms: tuple
    layer_entries: tuple
    moe_layer_entries: tuple = ()
    moe_module: tuple = ()
    aliases: tuple = ()
    text_config: Optional[Callable[[dict], dict]] = None
    extra_layers: bool = False


def standard_attention_params(cfg) -> int:
    """Matmul parameters of one attention layer that a token goes through: q, k, v and o."""
    d, n, k, h = cfg.emb_dim, cfg.num_query_heads, cfg.num_kv_heads, cfg.head_dim
    return d * n * h + 2 * d * k * h + n * h * d


def standard_score_value_dims(cfg) -> int:
    """Query-key plus value head sizes of the attention FLOPs: 2H."""
    return 2 * cfg.head_dim


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """One family (one decoder_block value).

    stacks(ModelConfig) -> [Stack]: the decoder's scanned stacks, in order.
    add_bos_eos: (add_bos, add_eos) of the family's released tokenizers, for tokenizer files that do not
      say (None: the tokenizer's own convention).
    refuse(Config): raises ConfigError for settings the family cannot run (beyond what traits imply).
    attention_params / score_value_dims: the attention parts of the analytic FLOP count (training/flops.py).
    """

    name: str
    stacks: Callable
    traits: Traits = Traits()
    hf: Optional[HFSpec] = None
    add_bos_eos: Optional[tuple] = None
    refuse: Optional[Callable] = None
    attention_params: Callable = standard_attention_params
    score_value_dims: Callable = standard_score_value_dims
