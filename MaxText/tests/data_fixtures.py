"""Small datasets in every format the input pipeline reads, written on the fly (no network)."""

import functools
import json
import os

import numpy as np

from MaxText.input_pipeline import BUILTIN_TOKENIZER_PATH, DataConfig, load_tokenizer, writers

NUM_DOCS = 40
TFDS_NAME = "maxtext_tiny_text:1.0.0"


def texts(n: int = NUM_DOCS, tag: str = "") -> list[str]:
    """n distinct documents of 5 to ~60 tokens."""
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler", "mind"]
    rng = np.random.default_rng(len(tag) + n)
    return [f"{tag}doc {i}: " + " ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for i in range(n)]


def token_ids(docs: list[str]) -> list[list[int]]:
    tok = load_tokenizer(BUILTIN_TOKENIZER_PATH)
    return [tok.encode(t) for t in docs]


def write_grain(root: str) -> dict[str, str]:
    """ArrayRecord (2 text shards, 1 ids shard) and Parquet (text, ids); returns name -> glob."""
    os.makedirs(root, exist_ok=True)
    docs = texts()
    half = NUM_DOCS // 2
    writers.write_array_record(f"{root}/text-0.array_record", [{"text": t} for t in docs[:half]])
    writers.write_array_record(f"{root}/text-1.array_record", [{"text": t} for t in docs[half:]])
    writers.write_array_record(f"{root}/ids.array_record", [{"ids": ids} for ids in token_ids(docs)])
    writers.write_parquet(f"{root}/text.parquet", {"text": docs})
    writers.write_parquet(f"{root}/ids.parquet", {"ids": token_ids(docs)})
    return {
        "array_record": f"{root}/text-*.array_record",
        "array_record_ids": f"{root}/ids.array_record",
        "parquet": f"{root}/text.parquet",
        "parquet_ids": f"{root}/ids.parquet",
    }


def write_hf(root: str) -> dict[str, tuple[str, str]]:
    """json/jsonl, parquet, text, arrow files and a save_to_disk dir; returns name -> (hf_path, files)."""
    import datasets  # pylint: disable=import-outside-toplevel

    os.makedirs(root, exist_ok=True)
    docs = texts()
    with open(f"{root}/data.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in docs)
    writers.write_parquet(f"{root}/data.parquet", {"text": docs})
    with open(f"{root}/data.txt", "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in docs)
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(f"{root}/saved")
    arrow = sorted(n for n in os.listdir(f"{root}/saved") if n.endswith(".arrow"))[0]
    return {
        "json": ("json", f"{root}/data.jsonl"),
        "parquet": ("parquet", f"{root}/data.parquet"),
        "text": ("text", f"{root}/data.txt"),
        "arrow": ("arrow", f"{root}/saved/{arrow}"),
        "save_to_disk": (f"{root}/saved", ""),
    }


def write_tfds(data_dir: str, file_format: str = "array_record") -> str:
    """A tiny TFDS dataset (train 40, validation 8 documents) under data_dir; returns its name:version."""
    _tfds_builder_class()(data_dir=data_dir, file_format=file_format).download_and_prepare()
    return TFDS_NAME


@functools.cache
def _tfds_builder_class():
    """The builder class, defined once: tfds registers every builder class by name."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    class MaxtextTinyText(tfds.core.GeneratorBasedBuilder):
        """Builds offline from in-memory text."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            del dl_manager
            return {
                "train": self._generate_examples(texts()),
                "validation": self._generate_examples(texts(8, "v")),
            }

        def _generate_examples(self, docs):  # pylint: disable=arguments-differ
            for i, t in enumerate(docs):
                yield i, {"text": t}

    return MaxtextTinyText


def data_config(dataset_type: str, **kw) -> DataConfig:
    """A small DataConfig (T=32, global batch 8) for dataset_type."""
    base = {
        "dataset_type": dataset_type,
        "tokenizer_path": BUILTIN_TOKENIZER_PATH,
        "max_target_length": 32,
        "global_batch_size": 8,
        "vocab_size": 4096,
        "data_shuffle_seed": 3,
        "eval_fraction": 0.1,
    }
    base.update(kw)
    return DataConfig(**base)
