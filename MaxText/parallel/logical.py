"""Logical axis names on activations: the one helper layers and the pipeline share."""

import flax.linen as nn


def constrain(x, names):
    """Annotates an activation with logical axis names; a no-op outside a mesh + rules context."""
    return nn.with_logical_constraint(x, names)
