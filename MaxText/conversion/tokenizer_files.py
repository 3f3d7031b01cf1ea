"""Which tokenizer files a checkpoint directory carries, which one is the tokenizer, and copying them."""

import os
import shutil

# The tokenizer itself, in order of preference: a Hugging Face tokenizer.json reproduces Hugging Face's
# tokenization exactly; tokenizer.model is SentencePiece or tiktoken ranks (told apart by content).
MAIN_FILES = ("tokenizer.json", "tokenizer.model")
# Files that travel with it: special tokens, BOS/EOS defaults and generation defaults.
COMPANION_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def _tiktoken_files(directory: str) -> list:
    return sorted(f for f in os.listdir(directory) if f.endswith(".tiktoken"))


def present(directory: str) -> list:
    """Names of the tokenizer and companion files in `directory`."""
    names = [f for f in MAIN_FILES + COMPANION_FILES if os.path.isfile(os.path.join(directory, f))]
    return names + _tiktoken_files(directory)


def main_file(directory: str) -> str | None:
    """The file the tokenizer loads from (preferred order above), or None when there is none."""
    for name in MAIN_FILES + tuple(_tiktoken_files(directory)):
        if os.path.isfile(os.path.join(directory, name)):
            return name
    return None


def copy(src_dir: str, dst_dir: str, names) -> list:
    """Copies `names` from src_dir to dst_dir; returns the names copied."""
    os.makedirs(dst_dir, exist_ok=True)
    for name in names:
        shutil.copyfile(os.path.join(src_dir, name), os.path.join(dst_dir, name))
    return list(names)
