"""Checkpoint interop with Hugging Face: config mapping, tensor mapping and streaming conversion both ways.

hf_config       config.json <-> our model keys
mappings        Hugging Face tensor names <-> our parameter paths, with the transpose/reshape of each
safetensors_io  streaming safetensors reader and sharded writer
orbax_io        streaming orbax save (one parameter in memory at a time) and single-leaf restores
hf_to_maxtext   `convert(hf_dir, output)`;  maxtext_to_hf: `export(checkpoint, output)`
"""
