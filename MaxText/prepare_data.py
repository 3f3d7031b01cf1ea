"""Pre-tokenizes text into a dataset the trainer reads without tokenizing.

  python3 -m MaxText.prepare_data --input 'corpus/*.jsonl' --output DIR --tokenizer assets/tokenizer/x.model \\
      [--format array_record|tfds] [--column text] [--name maxtext_prepared] [--version 1.0.0]

Inputs: `.txt` (one document per non-empty line), `.jsonl`/`.json` (one JSON object per line; `--column`
holds the text) and `.parquet` (`--column`). Token ids are stored without BOS/EOS; the trainer adds them as
configured (add_bos/add_eos), so one prepared dataset serves either choice.

--format array_record: one `<input stem>.array_record` per input file, records {"ids": [...]}; train with
  dataset_type=grain grain_train_files='DIR/*.array_record' train_data_columns=ids tokenize_train_data=false.
--format tfds: a TFDS dataset NAME:VERSION (file_format array_record, split "train", feature "ids") under
  DIR; train with dataset_type=tfds dataset_name=NAME:VERSION dataset_path=DIR train_data_columns=ids
  tokenize_train_data=false.

--sft: the records are supervised fine-tuning records (`--column messages`, or `--column prompt,completion`;
  .jsonl or .parquet), rendered with `--chat-template` (Jinja; "" = the one beside the tokenizer, else the
  default, as config chat_template) and tokenized as training does on the fly (MaxText/input_pipeline/sft.py):
  records {"ids": [...], "loss_mask": [...]}, 1 where a token is trained, without BOS/EOS (added at load
  time); train with use_sft=true dataset_type=grain train_data_columns=ids tokenize_train_data=false.
  Length limits apply at load time (max_target_length, sft_overlong). array_record only.

Progress goes to stderr, one line per input file. Every file is written under a temporary name and renamed
when complete, so an interrupted run leaves no half-written output; re-running skips the finished shards
(array_record) or the finished dataset (tfds). `DIR/manifest.json` records the tokenizer, and the documents
and tokens of every shard and in total. Bad input (no file matches, unreadable file, missing column) exits 2
with one line.
"""

import argparse
import json
import os
import sys
import time

from MaxText.config import ConfigError, exit_on_config_error
from MaxText.input_pipeline import chat_template, load_tokenizer, sft, sources, writers

MANIFEST = "manifest.json"


def read_texts(path: str, column: str) -> list[str]:
    """The documents of one input file (see the module docstring for the formats)."""
    try:
        if path.endswith(".parquet"):
            return sources.read_parquet_column([path], column, "--input")
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        if path.endswith((".jsonl", ".json")):
            records = [json.loads(line) for line in lines]
            missing = next((r for r in records if not isinstance(r, dict) or column not in r), None)
            if missing is not None:
                raise ConfigError(f"--column={column!r}: missing in a record of {path}")
            return [r[column] for r in records]
        return [line.rstrip("\n") for line in lines]
    except sources.DataError as e:
        raise ConfigError(str(e)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--input: cannot read {path}: {type(e).__name__}: {e}") from None


def read_records(path: str, columns: list[str]) -> list:
    """The records of one .jsonl / .parquet input file (--sft), as dicts holding at least `columns`."""
    try:
        if path.endswith(".parquet"):
            source = sources.ParquetSource([path], ",".join(columns), "--input")
            return [source[i] for i in range(len(source))]
        if not path.endswith((".jsonl", ".json")):
            raise ConfigError(f"--input: {path}: --sft reads .jsonl or .parquet records")
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except sources.DataError as e:
        raise ConfigError(str(e)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--input: cannot read {path}: {type(e).__name__}: {e}") from None


def sft_encoder(tokenizer, column: str, template: str):
    """path -> [{"ids", "loss_mask"}] of its SFT records, as the trainer renders and tokenizes them."""
    try:
        columns = sft.parse_columns(column)
    except sources.DataError as e:
        raise ConfigError(str(e).replace("train_data_columns", "--column")) from None
    renderer = chat_template.load_chat_template(template, tokenizer.path)

    def encode(path: str) -> list[dict]:
        out = []
        for i, record in enumerate(read_records(path, columns)):
            try:
                ids, mask = sft.tokenize_spans(tokenizer, sft.record_spans(renderer, record, columns))
            except ValueError as e:
                raise ConfigError(f"--input {path} record {i}: {e}") from None
            out.append({"ids": ids, sft.MASK_COLUMN: mask})
        return out

    return encode


def shard_names(files: list[str]) -> list[str]:
    """Output file name of each input (`<stem>.array_record`); clashing stems are an error."""
    names = [os.path.splitext(os.path.basename(f))[0] + ".array_record" for f in files]
    if len(set(names)) != len(names):
        raise ConfigError("--input: several input files share a name; their shards would clash")
    return names


def _load_manifest(output: str) -> dict:
    path = os.path.join(output, MANIFEST)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _save_manifest(output: str, manifest: dict) -> None:
    shards = manifest.get("shards", {})
    manifest["documents"] = sum(s["documents"] for s in shards.values())
    manifest["tokens"] = sum(s["tokens"] for s in shards.values())
    with writers.atomic_path(os.path.join(output, MANIFEST)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)


def _count_shard(path: str) -> dict:
    """Documents and tokens of a finished shard (when the manifest missed it: a kill between two renames)."""
    source = sources.JsonArrayRecordSource([path], "--output")
    lengths = [len(source[i]["ids"]) for i in range(len(source))]
    return {"documents": len(lengths), "tokens": int(sum(lengths))}


def prepare_array_record(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    files: list[str], output: str, tokenizer, column: str, encode=None, sft_info: dict | None = None
) -> dict:
    """One shard per input file (finished shards are kept); returns the manifest.

    encode: path -> records to write (default: {"ids"} of each text); sft_info: what --sft records
    (columns, chat template), stored in the manifest and checked on a re-run.
    """
    manifest = _load_manifest(output)
    if manifest.get("tokenizer", tokenizer.identity()) != tokenizer.identity():
        raise ConfigError(f"--output={output!r}: already holds shards made with another tokenizer")
    if manifest.get("shards") and manifest.get("sft") != sft_info:
        raise ConfigError(
            f"--output={output!r}: already holds shards made with other --sft/--column/--chat-template"
        )
    if encode is None:

        def encode(path: str) -> list[dict]:
            return [{"ids": x} for x in tokenizer.encode_batch(read_texts(path, column))]

    manifest.update(tokenizer=tokenizer.identity(), format="array_record", column="ids")
    if sft_info is not None:
        manifest["sft"] = sft_info
    shards = manifest.setdefault("shards", {})
    for i, (path, name) in enumerate(zip(files, shard_names(files)), start=1):
        out = os.path.join(output, name)
        if os.path.isfile(out):
            shards.setdefault(name, {"source": path, **_count_shard(out)})
            _progress(f"[{i}/{len(files)}] {name}: already done, kept")
            continue
        start = time.perf_counter()
        records = encode(path)
        writers.write_array_record(out, records)
        shards[name] = {
            "source": path,
            "documents": len(records),
            "tokens": sum(len(r["ids"]) for r in records),
        }
        _save_manifest(output, manifest)
        rate = shards[name]["tokens"] / max(time.perf_counter() - start, 1e-9)
        _progress(
            f"[{i}/{len(files)}] {name}: {len(records)} documents, {shards[name]['tokens']} tokens ({rate:,.0f}/s)"
        )
    _save_manifest(output, manifest)
    return manifest


def prepare_tfds(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    files: list[str], output: str, tokenizer, column: str, name: str, version: str
) -> dict:
    """The TFDS dataset name:version under `output` (kept when already prepared); returns the manifest."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    builder = _tfds_builder(name, version)(data_dir=output, file_format="array_record")
    manifest = _load_manifest(output)
    if builder.is_prepared():
        _progress(f"{name}:{version} is already prepared under {output}; kept")
        return manifest
    shards = {}

    def examples():
        for i, path in enumerate(files, start=1):
            ids = tokenizer.encode_batch(read_texts(path, column))
            shards[os.path.basename(path)] = {
                "source": path,
                "documents": len(ids),
                "tokens": sum(map(len, ids)),
            }
            _progress(f"[{i}/{len(files)}] {os.path.basename(path)}: {len(ids)} documents")
            for j, x in enumerate(ids):
                yield f"{i}-{j}", {"ids": x}

    builder.examples = examples
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
    manifest = {
        "tokenizer": tokenizer.identity(),
        "format": "tfds",
        "dataset_name": f"{name}:{version}",
        "column": "ids",
        "shards": shards,
    }
    _save_manifest(output, manifest)
    return manifest


_BUILDERS: dict = {}


def _tfds_builder(name: str, version: str):
    """A builder class named `name` (tfds registers classes by name, so each is made once per process)."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    if (name, version) in _BUILDERS:
        return _BUILDERS[name, version]

    def _info(self):
        features = tfds.features.FeaturesDict({"ids": tfds.features.Tensor(shape=(None,), dtype=np.int32)})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}  # pylint: disable=protected-access

    def generate_examples(self):
        yield from self.examples()

    cls = type(
        "".join(p.capitalize() for p in name.split("_")),
        (tfds.core.GeneratorBasedBuilder,),
        {
            "name": name,
            "VERSION": tfds.core.Version(version),
            "_info": _info,
            "_split_generators": _split_generators,
            "_generate_examples": generate_examples,
            "__module__": __name__,
        },
    )
    _BUILDERS[name, version] = cls
    return cls


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv):
    """The command-line arguments (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python3 -m MaxText.prepare_data", description=__doc__.split("\n", maxsplit=1)[0]
    )
    parser.add_argument("--input", required=True, help="glob of .txt / .jsonl / .parquet files")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--tokenizer", required=True, help="tokenizer model file (as tokenizer_path)")
    parser.add_argument("--format", choices=["array_record", "tfds"], default="array_record")
    parser.add_argument(
        "--column",
        default=None,
        help="text column of .jsonl / .parquet records (default text; --sft: messages)",
    )
    parser.add_argument(
        "--sft", action="store_true", help="chat / prompt-completion records -> ids and loss_mask (docstring)"
    )
    parser.add_argument(
        "--chat-template", default="", help='--sft: Jinja chat template ("" = the tokenizer\'s)'
    )
    parser.add_argument("--name", default="maxtext_prepared", help="--format tfds: dataset name")
    parser.add_argument("--version", default="1.0.0", help="--format tfds: dataset version")
    return parser.parse_args(argv)


@exit_on_config_error
def main(argv) -> int:
    """Prepares the dataset; exit code 0, or 2 (with one line on stderr) for bad input."""
    args = parse_args(argv)
    try:
        files = sources.expand_glob(args.input, "--input")
        tokenizer = load_tokenizer(args.tokenizer)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    column = args.column or ("messages" if args.sft else "text")
    if args.sft and args.format != "array_record":
        raise ConfigError(f"--sft: writes --format array_record only, got --format {args.format}")
    os.makedirs(args.output, exist_ok=True)
    if args.format == "tfds":
        manifest = prepare_tfds(files, args.output, tokenizer, column, args.name, args.version)
    elif args.sft:
        template = chat_template.load_chat_template(args.chat_template, tokenizer.path).source
        info = {"columns": column, "chat_template": template}
        encode = sft_encoder(tokenizer, column, args.chat_template)
        manifest = prepare_array_record(files, args.output, tokenizer, column, encode, info)
    else:
        manifest = prepare_array_record(files, args.output, tokenizer, column)
    _progress(
        f"done: {manifest.get('documents', 0)} documents, {manifest.get('tokens', 0)} tokens in {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
