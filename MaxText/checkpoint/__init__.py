"""Checkpoint reading and writing, below both training and inference: orbax train states (checkpointing),
the scan_layers layout interchange (layer_layout), streamed orbax writes (orbax_io), safetensors files
(safetensors_io) and the model keys a checkpoint carries (config_overlay)."""
