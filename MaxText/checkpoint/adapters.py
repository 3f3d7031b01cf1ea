"""Checkpoints that hold part of a model's parameters (LoRA: the adapters), pointing at a base for the rest.

A run that freezes most of its parameters (lora_rank > 0) saves only the trainable ones with their optimizer
state; its meta records `base_params` = {"path": the base checkpoint's step directory, "ema": whether the
EMA of the base's weights was read}. Readers restore the held parameters from the step and every other one
from the base, so `load_params` of such a step gives the whole adapted model, and it stays small.
"""

import os
import re

BASE_KEY = "base_params"


def prune(tree, keep):
    """The nested dict `tree` with only the leaves where the matching leaf of `keep` is True (empty dicts
    dropped)."""
    if isinstance(tree, dict):
        out = {k: prune(v, keep[k]) for k, v in tree.items()}
        return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}
    return tree if keep else {}


def merge(a, b):
    """Nested dicts a and b with disjoint leaves, as one tree."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        raise ValueError("merging parameter trees: a leaf is in both")
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if k in out else v
    return out


def held_mask(abstract, stored):
    """A tree like `abstract`: True where the stored tree (orbax metadata) holds that leaf. Layer stacks
    compare by name whatever their layout (decoder/layers_3/... is held when decoder/layers/... is)."""
    held = set()

    def collect(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                collect(v, path + (k,))
        else:
            held.add(_layout_free(path))

    collect(stored, ())

    def mark(node, path):
        if isinstance(node, dict):
            return {k: mark(v, path + (k,)) for k, v in node.items()}
        return _layout_free(path) in held

    return mark(abstract, ())


def _layout_free(path: tuple) -> tuple:
    """decoder/<stack>_<i>/... (scan_layers=false) -> decoder/<stack>/...: the same parameter either way."""
    if len(path) > 1 and path[0] == "decoder":
        return (path[0], re.sub(r"_\d+$", "", path[1])) + path[2:]
    return path


def invert(mask):
    return {k: invert(v) for k, v in mask.items()} if isinstance(mask, dict) else not mask


def base_record(path: str, ema: bool) -> dict:
    """What a partial checkpoint's meta says of its base (an absolute step directory)."""
    return {"path": os.path.abspath(path), "ema": bool(ema)}
