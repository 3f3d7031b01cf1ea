"""MaxText: a YAML-configured LLM training and serving stack on JAX."""
