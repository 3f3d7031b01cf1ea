"""decoder_block name -> FamilySpec. Every module of MaxText.models that defines `FAMILIES` (a tuple of
specs) is a family module; they are found and imported on first use, so adding a family is one module.

Also the config rules that depend on the family (its traits and refusals): importing MaxText registers
`check_config` with config validation, which therefore never imports the models.
"""

import importlib
import pkgutil

from MaxText.config import validate
from MaxText.config.errors import ConfigError, suggest
from MaxText.models.spec import FamilySpec, Stack  # pylint: disable=unused-import  # Stack re-exported

_SPECS: dict = {}


def _discover() -> dict:
    if not _SPECS:
        from MaxText import models  # pylint: disable=import-outside-toplevel

        for info in pkgutil.iter_modules(models.__path__):
            module = importlib.import_module(f"MaxText.models.{info.name}")
            for spec in getattr(module, "FAMILIES", ()):
                if spec.name in _SPECS:
                    raise RuntimeError(f"decoder_block {spec.name!r} is registered twice")
                _SPECS[spec.name] = spec
    return _SPECS


def names() -> list:
    return sorted(_discover())


def all_families() -> list:
    return [_discover()[n] for n in names()]


def family(name: str) -> FamilySpec:
    """The spec of a decoder_block, or ConfigError naming the known ones."""
    specs = _discover()
    if name not in specs:
        raise ConfigError(
            f"decoder_block={name!r}: expected one of {', '.join(names())}{suggest(name, specs)}"
        )
    return specs[name]


def by_model_type(model_type: str):
    """The family whose Hugging Face model_type (or alias) this is, or None."""
    for spec in all_families():
        if spec.hf and model_type in (spec.hf.model_type, *spec.hf.aliases):
            return spec
    return None


def stacks(cfg) -> list:
    """The decoder's stacks for a ModelConfig, in order (e.g. dense-first layers, then the rest)."""
    return family(cfg.decoder_block).stacks(cfg)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _check_layer_pattern(cfg, spec: FamilySpec) -> None:
    if spec.traits.local_global:
        _require(
            cfg.sliding_window_pattern >= 1,
            f"sliding_window_pattern=0: decoder_block={cfg.decoder_block!r} scans groups of "
            "sliding_window_pattern layers (the last one global); expected >= 1",
        )
        return
    mixing = [s.name for s in all_families() if s.traits.local_global]
    _require(
        cfg.sliding_window_pattern == 0,
        f"sliding_window_pattern={cfg.sliding_window_pattern}: only decoder_block {' or '.join(mixing)} "
        f"mixes local and global layers; expected 0 for {cfg.decoder_block!r}",
    )


def _check_moe(cfg, spec: FamilySpec) -> None:
    if not spec.traits.moe:
        moe = [s.name for s in all_families() if s.traits.moe]
        _require(
            cfg.num_experts == 0,
            f"num_experts={cfg.num_experts}: decoder_block={cfg.decoder_block!r} has no MoE layers; expected 0 "
            f"(MoE blocks: {', '.join(moe)})",
        )
        return
    e, k, g = cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_n_group
    _require(e > 0, f"num_experts=0: decoder_block={cfg.decoder_block!r} routes to experts; expected > 0")
    _require(
        cfg.base_moe_mlp_dim > 0, "base_moe_mlp_dim=0: MoE layers need the expert hidden size; expected > 0"
    )
    _require(k <= e, f"num_experts_per_tok={k}: must be <= num_experts={e}")
    _require(e % g == 0, f"moe_n_group={g}: must divide num_experts={e}")
    _require(cfg.moe_topk_group <= g, f"moe_topk_group={cfg.moe_topk_group}: must be <= moe_n_group={g}")
    _require(
        k <= cfg.moe_topk_group * (e // g),
        f"num_experts_per_tok={k}: must be <= moe_topk_group x experts per group = "
        f"{cfg.moe_topk_group * (e // g)}",
    )
    if cfg.moe_group_score == "top2_sum" and g > 1:
        _require(e // g >= 2, f"moe_group_score='top2_sum': needs >= 2 experts per group, got {e // g}")
    _require(
        cfg.first_num_dense_layers < cfg.base_num_decoder_layers,
        f"first_num_dense_layers={cfg.first_num_dense_layers}: must be < base_num_decoder_layers="
        f"{cfg.base_num_decoder_layers}",
    )


def _check_mla(cfg, spec: FamilySpec) -> None:
    if not spec.traits.mla:
        return
    _require(
        cfg.kv_lora_rank > 0,
        f"kv_lora_rank=0: decoder_block={cfg.decoder_block!r} uses latent attention; expected > 0",
    )
    _require(
        cfg.qk_rope_head_dim % 2 == 0,
        f"qk_rope_head_dim={cfg.qk_rope_head_dim}: rotary embeddings need an even size",
    )


def check_config(cfg) -> None:
    """The config rules that depend on the family: a known decoder_block, its traits, its refusals."""
    spec = family(cfg.decoder_block)
    _check_layer_pattern(cfg, spec)
    _check_moe(cfg, spec)
    _check_mla(cfg, spec)
    if spec.refuse is not None:
        spec.refuse(cfg)


validate.register_family_rules(check_config)
