"""User datasets as random-access record sources, and records as token sequences.

Formats (one record = one document):
  grain  ArrayRecord files (`*.array_record*`) whose records are UTF-8 JSON objects, e.g. {"text": "..."} or
         {"ids": [1, 2, 3]} (what `MaxText.prepare_data` writes), and Parquet files (`*.parquet`). Files come
         from globs, optionally a weighted mixture "a*.array_record:0.7;b*.parquet:0.3" (weights need not sum
         to 1; a part without ":w" weighs 1). Files of one glob are read in sorted name order.
  hf     Hugging Face `datasets`: a builder name ("json", "parquet", "text", "arrow", "csv") with local
         `hf_data_files` globs, or a directory written by `save_to_disk`.
  tfds   `tfds.data_source(name:version, data_dir=dataset_path)` for datasets prepared in array_record
         format (no TensorFlow needed); tfrecord datasets need TensorFlow and say so when it is missing.

The column `train_data_columns` holds either text (tokenized here, with BOS/EOS as configured; blank text is
no document) or token ids
(`tokenize_train_data=false`: used as they are, BOS/EOS still added as configured). A column holding the
other kind is an error naming it. Records are encoded with a grain `MapDataset`, in `grain_worker_count`
worker processes when > 0 (the result, and its order, do not depend on the worker count).

Every problem with the data itself (no file matches, unreadable or corrupt file, no records, missing column,
ids outside the vocabulary) raises `DataError`, whose one-line message names the setting and the file.
"""

import glob
import json
import os

import numpy as np
from absl import flags as absl_flags

from MaxText.config.errors import ConfigError, require
from MaxText.input_pipeline import tokenizers

ARRAY_RECORD_MARK = ".array_record"
# grain, pyarrow, datasets and tensorflow_datasets are imported where a format needs them (config/errors.py's
# `require`), so synthetic and built-in data run without them.
READING_RECORDS = "reading dataset records (dataset_type='grain', 'hf' or 'tfds')"


class DataError(ValueError):
    """The configured data cannot be read as configured (one line naming the key, file and problem)."""


def parse_mixture(spec: str, key: str) -> list[tuple[str, float]]:
    """[(glob, weight)] from "a*:0.7;b*:0.3" (a part without a numeric ":w" suffix weighs 1)."""
    parts = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        pattern, weight = part, 1.0
        head, sep, tail = part.rpartition(":")
        if sep:
            try:
                pattern, weight = head, float(tail)
            except ValueError:
                pass  # a ':' inside a path (e.g. gs://) rather than a weight
        if not weight > 0:
            raise DataError(f"{key}={spec!r}: weight of {pattern!r} must be > 0, got {weight}")
        parts.append((pattern, weight))
    if not parts:
        raise DataError(f"{key} is empty; set it to a file glob (or 'glob:weight;glob:weight')")
    return parts


def expand_glob(pattern: str, key: str) -> list[str]:
    """Sorted files matching `pattern`; an error when none does."""
    files = sorted(f for f in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(f))
    if not files:
        raise DataError(f"{key}: {pattern!r} matches no file")
    return files


class ListSource:
    """Random-access source over an in-memory list of records (grain's RandomAccessDataSource protocol)."""

    def __init__(self, records: list):
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int):
        return self._records[index]


class JsonArrayRecordSource:
    """ArrayRecord files whose records are JSON objects; read lazily, decoded per record."""

    def __init__(self, files: list[str], key: str):
        self._files, self._key = files, key
        grain = require("grain", f"{key}: ArrayRecord files")
        require("array_record", f"{key}: ArrayRecord files")
        try:
            self._source = grain.sources.ArrayRecordDataSource(files)
            self._length = len(self._source)
        except Exception as e:  # array_record raises RuntimeError/ValueError/OSError variants
            raise DataError(f"{key}: cannot open ArrayRecord files {files}: {_first_line(e)}") from None

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict:
        try:
            raw = self._source[index]
        except Exception as e:  # pylint: disable=broad-exception-caught
            raise DataError(
                f"{self._key}: cannot read record {index} of {self._files}: {_first_line(e)}"
            ) from None
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not isinstance(record, dict):
            raise DataError(
                f"{self._key}: record {index} of {self._files} is not a UTF-8 JSON object (MaxText's ArrayRecord "
                'records are JSON objects such as {"text": ...} or {"ids": [...]})'
            )
        return record

    def __getstate__(self):  # reopened in grain worker processes
        return {"files": self._files, "key": self._key}

    def __setstate__(self, state):
        self.__init__(state["files"], state["key"])


class ParquetSource:
    """Columns of Parquet files as records {column: value}, read lazily one row group at a time.

    `column` names one column or several, comma-separated (use_sft's "prompt,completion"); `optional` columns
    are read too where every file has them (an SFT "loss_mask").

    A row group is Parquet's unit of I/O: reading record i reads (and keeps, until another one is needed) the
    column of i's row group only, so records read in increasing order read each row group at most once and a
    host that needs none of a row group's records never reads it. Only the requested records are converted to
    Python objects.
    """

    def __init__(self, files: list[str], column: str, key: str, optional: tuple = ()):
        pq = require("pyarrow.parquet", f"{key}: Parquet files")

        self._files, self._column, self._key, self._optional = files, column, key, tuple(optional)
        wanted = [c.strip() for c in column.split(",")]
        groups = []  # (file index, row group index, rows)
        for f, path in enumerate(files):
            try:
                parquet = pq.ParquetFile(path)
                names = parquet.schema_arrow.names
                groups.extend(
                    (f, g, parquet.metadata.row_group(g).num_rows) for g in range(parquet.num_row_groups)
                )
            except Exception as e:  # pylint: disable=broad-exception-caught  # pyarrow.ArrowInvalid, OSError
                raise DataError(f"{key}: cannot read Parquet file {path}: {_first_line(e)}") from None
            missing = [c for c in wanted if c not in names]
            if missing:
                raise DataError(
                    f"train_data_columns={column!r}: no such column {missing[0]!r} in {path} (columns: {names})"
                )
            optional = [c for c in optional if c in names]
        self._columns = wanted + list(optional)
        self._groups = groups
        self._ends = np.cumsum([n for *_, n in groups], dtype=np.int64)
        self._cached = (-1, None)  # (row group, its columns)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        g = int(np.searchsorted(self._ends, index, side="right"))
        if self._cached[0] != g:
            import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

            f, group, _ = self._groups[g]
            try:
                table = pq.ParquetFile(self._files[f]).read_row_group(group, columns=self._columns)
            except Exception as e:  # pylint: disable=broad-exception-caught
                raise DataError(
                    f"{self._key}: cannot read Parquet file {self._files[f]}: {_first_line(e)}"
                ) from None
            self._cached = (g, [table.column(c) for c in self._columns])
        first = int(self._ends[g] - self._groups[g][2])
        return {c: values[index - first].as_py() for c, values in zip(self._columns, self._cached[1])}

    def __getstate__(self):  # grain worker processes read their own row groups
        return {"files": self._files, "column": self._column, "key": self._key, "optional": self._optional}

    def __setstate__(self, state):
        self.__init__(state["files"], state["column"], state["key"], state["optional"])


def read_parquet_column(files: list[str], column: str, key: str) -> list:
    """Every value of one column of Parquet files, in file order."""
    source = ParquetSource(files, column, key)
    return [source[i][column] for i in range(len(source))]


def grain_source(pattern: str, key: str, column: str, optional: tuple = ()):
    """Record source over the files of one glob (all ArrayRecord or all Parquet; `ParquetSource` reads the
    columns `column` names and the `optional` ones its files have)."""
    files = expand_glob(pattern, key)
    kinds = {_file_kind(f) for f in files}
    if None in kinds or len(kinds) > 1:
        raise DataError(
            f"{key}: {pattern!r} must match only ArrayRecord ('{ARRAY_RECORD_MARK}' in the name) or only "
            f"'.parquet' files, got {files[:4]}"
        )
    if kinds == {"parquet"}:
        return ParquetSource(files, column, key, optional)
    return JsonArrayRecordSource(files, key)


def _file_kind(path: str):
    name = os.path.basename(path)
    if ARRAY_RECORD_MARK in name:
        return "array_record"
    if name.endswith(".parquet"):
        return "parquet"
    return None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


class RecordEncoder:  # pylint: disable=too-few-public-methods
    """record -> int32 token ids with BOS/EOS; picklable (the tokenizer is loaded again in each worker)."""

    def __init__(self, tokenizer_path: str, column: str, tokenize: bool, add_bos: bool, add_eos: bool):
        self.tokenizer_path, self.column, self.tokenize = tokenizer_path, column, tokenize
        self.add_bos, self.add_eos = add_bos, add_eos

    def __call__(self, record) -> np.ndarray:
        tokenizer = tokenizers.load_tokenizer(self.tokenizer_path)
        if not isinstance(record, dict) or self.column not in record:
            names = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(
                f"train_data_columns={self.column!r}: no such column in the data (columns: {names})"
            )
        value = record[self.column]
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        is_text = isinstance(value, str)
        if self.tokenize and not is_text:
            raise DataError(
                f"train_data_columns={self.column!r} holds token ids, not text; set tokenize_train_data=false "
                "to use pretokenized ids"
            )
        if not self.tokenize and is_text:
            raise DataError(
                f"train_data_columns={self.column!r} holds text, not token ids; set tokenize_train_data=true "
                "to tokenize it"
            )
        if is_text and not value.strip():
            return np.zeros(0, np.int32)  # an empty line or field is no document (not a lone BOS/EOS pair)
        ids = tokenizer.encode(value) if is_text else np.asarray(value).reshape(-1)
        if not is_text and ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise DataError(f"train_data_columns={self.column!r} holds {ids.dtype} values, not token ids")
        prefix = [tokenizer.bos_id] if self.add_bos else []
        suffix = [tokenizer.eos_id] if self.add_eos else []
        return np.concatenate([prefix, ids, suffix]).astype(np.int32)


class SubsetSource:
    """Records `indices` of `source`, in that order (what one host reads of a random-access source).

    with_index: items are (record index in `source`, record), for encoders whose errors name the record.
    """

    def __init__(self, source, indices: np.ndarray, with_index: bool = False):
        self._source, self._indices = source, np.asarray(indices, dtype=np.int64)
        self._with_index = with_index

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int):
        record = self._source[int(self._indices[index])]
        return (int(self._indices[index]), record) if self._with_index else record


def encode_records(source, indices: np.ndarray, encoder, worker_count: int) -> list:
    """encoder(record) of records `indices` of `source` (token ids, for a `RecordEncoder`), in the order
    given; no other record is read. An encoder with a true `wants_index` gets (record index, record).

    Reads in increasing index order (sequential within files and Parquet row groups), in `worker_count` grain
    worker processes when > 0; the result does not depend on the worker count.
    """
    grain = require("grain", READING_RECORDS)
    indices = np.asarray(indices, dtype=np.int64)
    order = np.argsort(indices, kind="stable")
    subset = SubsetSource(source, indices[order], with_index=getattr(encoder, "wants_index", False))
    dataset = grain.MapDataset.source(subset).map(encoder)
    if worker_count <= 0 or len(indices) < 2:
        encoded = [dataset[i] for i in range(len(dataset))]
    else:
        if (
            not absl_flags.FLAGS.is_parsed()
        ):  # grain's worker pool reads absl flags; a library must not parse argv
            absl_flags.FLAGS.mark_as_parsed()
        options = grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=64)
        encoded = list(dataset.to_iter_dataset().mp_prefetch(options))
    out: list = [None] * len(indices)
    for k, ids in zip(order.tolist(), encoded):
        out[k] = ids
    return out


def hf_source(hf_path: str, data_files: str, split: str, streaming: bool = False):
    """A `datasets` split: `load_from_disk` for a `save_to_disk` directory, else `load_dataset` on local files.

    Returns a `datasets.Dataset` (random access), or an `IterableDataset` when `streaming`.
    """
    datasets = require("datasets", "dataset_type='hf'")
    datasets.disable_progress_bars()
    where = f"hf_path={hf_path!r}"
    try:
        if os.path.isdir(hf_path):
            loaded = datasets.load_from_disk(hf_path)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{where}: no split {split!r} (splits: {sorted(loaded)})")
                loaded = loaded[split]
            return loaded.to_iterable_dataset() if streaming else loaded
        if not data_files:
            raise DataError(f"{where}: set hf_data_files to local files (this build never downloads data)")
        files = [
            f
            for part in data_files.split(";")
            if part.strip()
            for f in expand_glob(part.strip(), "hf_data_files")
        ]
        return datasets.load_dataset(hf_path, data_files={split: files}, split=split, streaming=streaming)
    except DataError:
        raise
    except Exception as e:  # pylint: disable=broad-exception-caught  # datasets raises many kinds
        raise DataError(f"{where} hf_data_files={data_files!r}: cannot load: {_first_line(e)}") from None


def tfds_source(name: str, data_dir: str, split: str):
    """Random-access TFDS split (array_record, no TensorFlow) or a list of its records (tfrecord + TF)."""
    tfds = require("tensorflow_datasets", "dataset_type='tfds'")

    where = f"dataset_name={name!r} dataset_path={data_dir!r}"
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
        if not builder.is_prepared():
            raise DataError(f"{where}: dataset not found (prepare it there first)")
        if split not in builder.info.splits:
            raise DataError(f"{where}: no split {split!r} (splits: {sorted(builder.info.splits)})")
        file_format = builder.info.file_format.value if builder.info.file_format else "tfrecord"
        if file_format != "array_record":
            require(
                "tensorflow",
                f"{where}: a dataset stored as {file_format}",
                instead="prepare the dataset with file_format='array_record' "
                "(or `python3 -m MaxText.prepare_data --format tfds`)",
            )
            return ListSource(list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))))
        return builder.as_data_source(split=split)
    except (DataError, ConfigError):
        raise
    except Exception as e:  # pylint: disable=broad-exception-caught  # tfds raises many kinds
        raise DataError(f"{where}: cannot open split {split!r}: {_first_line(e)}") from None
