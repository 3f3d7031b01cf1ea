"""Checkpoint interop with Hugging Face: config mapping, tensor mapping and streaming conversion both ways.

hf_config       reading config.json (MaxText.models.hf_configs maps it to our keys and back)
                (MaxText.models.hf_mappings maps tensor names <-> our parameter paths, every family)
safetensors_io  streaming safetensors reader and sharded writer
orbax_io        streaming orbax save (one parameter in memory at a time) and single-leaf restores
hf_to_maxtext   `convert(hf_dir, output)`;  maxtext_to_hf: `export(checkpoint, output)`
"""
