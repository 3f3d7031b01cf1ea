"""MaxText: a JAX/Flax LLM training, decoding and serving stack."""

# Registers the family-dependent config rules (models/registry.py) with config validation, which sits below
# the models and so never imports them itself. The registry is light: family modules load on first use.
from MaxText.models import registry as _registry  # pylint: disable=unused-import
