"""Reading a Hugging Face directory's config.json. The mapping between config.json and our model keys, both
ways and for every family, is MaxText.models.hf_configs (one source of truth with the tensor mapping)."""

import json
import os

from MaxText.config import ConfigError


def read_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{hf_dir}: no config.json (expected a Hugging Face model directory)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)
