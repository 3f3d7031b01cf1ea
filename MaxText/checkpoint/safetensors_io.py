"""Streaming safetensors reading and writing: one tensor in memory at a time, every dtype (bfloat16 included).

File format (the safetensors specification): 8 bytes little-endian header length n, n bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw little-endian
tensor bytes, offsets relative to the end of the header. A model sharded over several files has
`model.safetensors.index.json` with {"metadata": {"total_size"}, "weight_map": {name: file}}.

Reading seeks to one tensor and reads only its bytes. Headers are checked against the file before any tensor is
read (length prefix, UTF-8 JSON, field types, dtype, byte size = shape x dtype, ranges inside the file and
not overlapping): a damaged file is refused with a ConfigError naming it. Tensor bytes carry no checksum in
this format, so a byte overwritten inside the data cannot be detected. Writing lays out every shard's header first (shapes
and dtypes are known before any data), so tensors can then be written in any order, one at a time.
"""

import json
import os
import struct
from typing import Iterable, NamedTuple

import ml_dtypes
import numpy as np

from MaxText.config.errors import ConfigError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_ALIGN = 8
MAX_HEADER_BYTES = 100_000_000  # the format's limit (safetensors' MAX_HEADER_SIZE)

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}


class TensorInfo(NamedTuple):
    """Where one tensor lives: file, absolute byte offset, numpy dtype and shape."""

    file: str
    offset: int
    dtype: np.dtype
    shape: tuple


def dtype_code(dtype) -> str:
    """The safetensors dtype code ("BF16", "F32", ...) of a numpy dtype."""
    dtype = np.dtype(dtype)
    if dtype not in _CODES:
        raise ValueError(f"dtype {dtype} cannot be stored in safetensors")
    return _CODES[dtype]


def _load_header(path: str, f, size: int) -> tuple:
    """(header JSON object, header length) of an open safetensors file of `size` bytes."""
    if size < 8:
        raise ConfigError(f"{path}: {size} bytes, too short for the 8-byte header length; truncated?")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8:
        raise ConfigError(
            f"{path}: header length {n} exceeds the {size - 8} bytes after it; the file is truncated or "
            "not safetensors"
        )
    if n > MAX_HEADER_BYTES:
        raise ConfigError(f"{path}: header length {n} exceeds the format's limit of {MAX_HEADER_BYTES} bytes")
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: header is not UTF-8 text (file byte {8 + e.start}); expected JSON"
        ) from None
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: header is not valid JSON ({e.msg} at character {e.pos} of its {n} bytes)"
        ) from None
    if not isinstance(header, dict):
        raise ConfigError(f"{path}: header is a JSON {type(header).__name__}, expected an object")
    if not isinstance(header.get("__metadata__", {}), dict):
        raise ConfigError(f"{path}: header's __metadata__ is not an object")
    return header, n


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _entry(path: str, name: str, entry) -> tuple:
    """(dtype, shape, begin, end) of one header entry, checked for types and a byte size that fits."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: tensor {name!r}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ConfigError(
            f"{path}: tensor {name!r} has unsupported dtype {dtype!r} (expected one of {', '.join(DTYPES)})"
        )
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise ConfigError(f"{path}: tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise ConfigError(f"{path}: tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    nbytes = int(np.prod(shape, dtype=object)) * DTYPES[dtype].itemsize
    if end - begin != nbytes:
        raise ConfigError(
            f"{path}: tensor {name!r}: data_offsets [{begin}, {end}] hold {end - begin} bytes, "
            f"but {dtype}{shape} needs {nbytes}"
        )
    return DTYPES[dtype], tuple(shape), begin, end


def read_header(path: str) -> dict:
    """{name: TensorInfo} of one safetensors file (reads only the header). ConfigError (naming the file and
    the problem) when the header is damaged or names bytes the file does not hold."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header, n = _load_header(path, f, size)
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    data_bytes = size - 8 - n
    out, ranges = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _entry(path, name, entry)
        if end > data_bytes:
            raise ConfigError(
                f"{path}: tensor {name!r} ends at data byte {end}, but the file holds {data_bytes}; truncated?"
            )
        ranges.append((begin, end, name))
        out[name] = TensorInfo(path, 8 + n + begin, dtype, shape)
    ranges.sort()
    for (_, end, first), (begin, _, second) in zip(ranges, ranges[1:]):
        if begin < end:
            raise ConfigError(f"{path}: tensors {first!r} and {second!r} overlap (data bytes {begin}..{end})")
    return out


def _shard_files(directory: str) -> list:
    """The safetensors files of a model directory: the index's, else every *.safetensors file."""
    index = os.path.join(directory, INDEX_FILE)
    if not os.path.isfile(index):
        return sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    try:
        with open(index, "rb") as f:
            weight_map = json.loads(f.read().decode("utf-8")).get("weight_map")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise ConfigError(
            f'{index}: not a JSON object ({e}); expected {{"weight_map": {{name: file}}}}'
        ) from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ConfigError(f"{index}: weight_map is missing or not an object of file names")
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not os.path.isfile(os.path.join(directory, f))]
    if missing:
        raise ConfigError(f"{index}: names {missing[0]}, which is not in {directory}")
    return files


class SafetensorsReader:
    """All tensors of a Hugging Face model directory (one file, or sharded with an index), read lazily."""

    def __init__(self, directory: str):
        self.directory = directory
        files = _shard_files(directory)
        if not files:
            raise FileNotFoundError(f"{directory}: no *.safetensors files")
        self.files = [os.path.join(directory, f) for f in files]
        self.tensors = {}
        for path in self.files:
            for name, info in read_header(path).items():
                if name in self.tensors:
                    raise ConfigError(f"{path}: tensor {name!r} is also in {self.tensors[name].file}")
                self.tensors[name] = info

    def names(self) -> list:
        return sorted(self.tensors)

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def get(self, name: str) -> np.ndarray:
        """One tensor, memory-mapped read-only: its pages load from the file as they are used and belong to
        the page cache, so a transposed copy or the write of an unchanged tensor holds it only once."""
        info = self.tensors[name]
        if (
            os.path.getsize(info.file)
            < info.offset + int(np.prod(info.shape, dtype=np.int64)) * info.dtype.itemsize
        ):
            raise ConfigError(
                f"{info.file}: tensor {name!r} is truncated (the file shrank after it was opened)"
            )
        if not info.shape or 0 in info.shape:
            return np.zeros(info.shape, info.dtype)
        return np.memmap(info.file, dtype=info.dtype, mode="r", offset=info.offset, shape=info.shape)


def _plan_shards(entries, max_shard_bytes: int) -> list:
    """Greedy split of (name, shape, dtype) entries, in order, into shards of at most max_shard_bytes."""
    shards, current, size = [], [], 0
    for name, shape, dtype in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, tuple(shape), np.dtype(dtype)))
        size += nbytes
    if current or not shards:
        shards.append(current)
    return shards


class ShardedWriter:
    """Writes a model's tensors into one or more safetensors files, one tensor at a time, in any order.

    `entries` lists every (name, shape, dtype) up front; each shard file is created at its full size with
    its header, and `write(name, array)` fills that tensor's bytes. `close()` writes the index (when sharded)
    and checks that every tensor was written.
    """

    def __init__(self, directory: str, entries: Iterable, max_shard_bytes: int):
        shards = _plan_shards(list(entries), max_shard_bytes)
        self.directory = directory
        self.where = {}  # name -> (file, absolute offset, shape, dtype)
        self.pending = set()
        self.weight_map = {}
        self.total_size = 0
        for k, shard in enumerate(shards):
            file = SINGLE_FILE if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            self._create(os.path.join(directory, file), shard)
            self.weight_map.update({name: file for name, _, _ in shard})

    def _create(self, path: str, shard) -> None:
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dtype in shard:
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {
                "dtype": dtype_code(dtype),
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % _ALIGN)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            f.truncate(8 + len(blob) + offset)
        for name, shape, dtype in shard:
            begin = header[name]["data_offsets"][0]
            self.where[name] = (path, 8 + len(blob) + begin, shape, dtype)
            self.pending.add(name)
        self.total_size += offset

    def write(self, name: str, array: np.ndarray) -> None:
        path, offset, shape, dtype = self.where[name]
        if tuple(array.shape) != shape or array.dtype != dtype:
            raise ValueError(
                f"tensor {name!r}: got {array.dtype}{list(array.shape)}, planned {dtype}{list(shape)}"
            )
        with open(path, "r+b") as f:
            f.seek(offset)
            np.ascontiguousarray(array).tofile(f)
        self.pending.discard(name)

    def close(self) -> list:
        """Writes the index for a sharded model; returns the file names written."""
        if self.pending:
            raise ValueError(f"tensors never written: {sorted(self.pending)[:5]}")
        files = sorted(set(self.weight_map.values()))
        if len(files) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": dict(sorted(self.weight_map.items())),
            }
            with open(os.path.join(self.directory, INDEX_FILE), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)
            files.append(INDEX_FILE)
        return files
