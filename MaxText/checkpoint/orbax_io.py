"""Orbax checkpoints one parameter at a time: a streaming save and single-leaf restores.

Orbax's PyTree save takes every leaf in memory at once. For conversion we hand it `LazyArray` leaves that
only know their shape and dtype; a type handler registered for them (in a private registry, so nothing
global changes) builds each array when its turn comes, writes it through orbax's own numpy handler and
drops it before building the next. Peak host memory is one stacked parameter. The result is an ordinary
orbax PyTree checkpoint: `checkpointing.load_params` restores it like any other.
"""

import copy
import itertools
import os
from typing import Callable, Iterator, NamedTuple, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

from MaxText.checkpoint import integrity

# Chunks of at most this many bytes, so restoring one shard of a huge parameter reads only its chunks.
CHUNK_BYTES = 64 * 2**20


class LazyArray:
    """A leaf that orbax writes piece by piece: `pieces()` yields (index, array) pairs that together cover
    the leaf, e.g. one layer of a stacked parameter at a time ((slice(None), i) for param_scan_axis=1)."""

    def __init__(self, shape: tuple, dtype, pieces: Callable[[], Iterator[tuple]]):
        self.shape, self.dtype, self.pieces = tuple(shape), np.dtype(dtype), pieces


class _LazyArrayHandler(ocp.type_handlers.NumpyHandler):
    """Writes LazyArray leaves one after another, each through one tensorstore transaction.

    Orbax's numpy handler would need the whole leaf as one array and then copies it into tensorstore's
    chunk buffers (twice the leaf in memory). Here the pieces go straight into the transaction's chunk
    buffers, so a leaf occupies memory once, plus one piece, until its commit writes it out. The array
    spec (path, chunking, OCDBT layout) is the one orbax's numpy handler builds, so the checkpoint is
    ordinary and orbax restores it; the PyTree metadata records these leaves as numpy arrays.
    """

    def __init__(self):
        super().__init__(deepcopy_host_arrays=False)

    async def _write(self, value: LazyArray, info, arg) -> None:
        await info.await_path_creation()
        info = copy.copy(info)
        # Uncompressed: zstd would hold an encoded copy of each chunk in memory as well.
        info.use_compression = False
        spec = ocp.type_handlers.get_json_tspec_write(
            info,
            use_ocdbt=info.is_ocdbt_checkpoint,
            global_shape=value.shape,
            local_shape=value.shape,
            dtype=value.dtype,
            process_index=jax.process_index() if info.is_ocdbt_checkpoint else None,
            arg=arg,
        )
        store = await ts.open(ts.Spec(spec), create=True, open=True, context=info.ts_context)
        txn = ts.Transaction()
        target = store.with_transaction(txn)
        for index, piece in value.pieces():
            if piece.dtype != value.dtype:
                raise ValueError(f"{info.name}: piece of dtype {piece.dtype}, expected {value.dtype}")
            await target[index].write(piece)
            del piece
        await txn.commit_async()

    async def serialize(self, values, infos, args=None):
        args = args or [ocp.SaveArgs()] * len(values)

        async def write_all():
            for value, info, arg in zip(values, infos, args):
                await self._write(value, info, arg)

        return [ocp.future.CommitFutureAwaitingContractedSignals(write_all(), name="lazy_array_handler")]


def _registry():
    defaults = [(t, ocp.type_handlers.get_type_handler(t)) for t in ocp.type_handlers.supported_types()]
    return ocp.type_handlers.create_type_handler_registry(*defaults, (LazyArray, _LazyArrayHandler()))


def save_streaming(directory: str, tree: dict) -> None:
    """Saves a PyTree whose leaves are LazyArrays as an orbax PyTree checkpoint at `directory`."""
    save_args = map_leaves(lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES), tree)
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=_registry()))
    checkpointer.save(os.path.abspath(directory), args=ocp.args.PyTreeSave(tree, save_args=save_args))
    checkpointer.close()


def save_json(directory: str, data: dict) -> None:
    """An orbax JSON item (as CheckpointManager writes `meta`), readable by checkpointing.read_meta."""
    checkpointer = ocp.Checkpointer(ocp.JsonCheckpointHandler())
    checkpointer.save(os.path.abspath(directory), args=ocp.args.JsonSave(data))
    checkpointer.close()


def map_leaves(fn, tree):
    """Maps over the leaves of a nested dict (LazyArrays and metadata objects are leaves)."""
    if isinstance(tree, dict):
        return {k: map_leaves(fn, v) for k, v in tree.items()}
    return fn(tree)


def tree_metadata(state_dir: str):
    """The stored tree of an orbax PyTree checkpoint: dicts (NamedTuples by field name), lists (tuples) and
    orbax's array metadata at the leaves. Reads metadata only; CorruptCheckpoint when it is damaged."""
    state_dir = os.path.abspath(state_dir)
    integrity.check_state_files(state_dir)
    with integrity.orbax_reads(state_dir, os.path.dirname(state_dir)):
        return ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata


def children(node) -> list:
    """(key, child) pairs of a stored tree's dict or list node (list keys as strings, as orbax names them)."""
    if isinstance(node, dict):
        return list(node.items())
    if isinstance(node, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(node)]
    return []


def ema_prefix(tree) -> Optional[tuple]:
    """The path at which a stored train state's optimizer state keeps the EMA of the weights (ema_decay:
    training/opt_wrappers.EmaParamsState, a node named `ema` holding the params' tree), or None."""
    params = tree.get("params") if isinstance(tree, dict) else None

    def find(node, path):
        if isinstance(node, dict) and path[-1] == "ema" and params and set(node) == set(params):
            return path
        return next((hit for k, v in children(node) if (hit := find(v, path + (k,)))), None)

    return find(tree.get("opt_state"), ("opt_state",)) if params else None


def leaf_metadata(state_dir: str) -> dict:
    """{path tuple: LeafInfo} of every array in an orbax PyTree checkpoint (reads metadata only), with the
    fingerprints the step's meta records. CorruptCheckpoint when the metadata is damaged."""
    state_dir = os.path.abspath(state_dir)
    metadata = tree_metadata(state_dir)
    meta_file = os.path.join(os.path.dirname(state_dir), "meta", "metadata")
    sums = (
        integrity.read_json(meta_file, f"checkpoint {meta_file}").get("checksums")
        if os.path.isfile(meta_file)
        else None
    )
    sums = sums if isinstance(sums, dict) else {}
    use_zarr3 = bool(getattr(metadata, "use_zarr3", False))
    out = {}

    def walk(node, prefix):
        if hasattr(node, "shape"):
            checksum = sums.get("/".join(str(k) for k in prefix))
            out[prefix] = LeafInfo(node.name, tuple(node.shape), np.dtype(node.dtype), use_zarr3, checksum)
        for k, v in children(node):
            walk(v, prefix + (k,))

    walk(metadata.tree, ())
    return out


class LeafInfo(NamedTuple):
    """One stored array: orbax's name for it ("params.decoder...."), shape, dtype, format, and the
    fingerprint recorded when it was saved (None when the checkpoint has none)."""

    name: str
    shape: tuple
    dtype: np.dtype
    use_zarr3: bool
    checksum: Optional[str] = None


def _chunk_boxes(shape: tuple, chunk: tuple) -> Iterator[tuple]:
    """Index tuples of the chunk grid (chunk-aligned boxes covering `shape`)."""
    starts = itertools.product(*(range(0, n, c) for n, c in zip(shape, chunk)))
    for start in starts:
        yield tuple(slice(s, min(s + c, n)) for s, c, n in zip(start, chunk, shape))


def read_leaf(state_dir: str, leaf: LeafInfo) -> np.ndarray:
    """Reads one array of an orbax checkpoint into host memory, one storage chunk at a time.

    Orbax's own restore would hold the array about three times (its 100 MB chunk cache, the decoded
    chunks and the result); reading chunk by chunk into the result, with no cache, holds it once plus one
    chunk. The tensorstore spec is orbax's own, so every orbax array format reads the same way.
    CorruptCheckpoint (one line naming the array and the problem) when its files are damaged or its bytes
    differ from the fingerprint recorded at save time.
    """
    state_dir = os.path.abspath(state_dir)
    with integrity.orbax_reads(f"{state_dir} ({leaf.name})", os.path.dirname(state_dir)):
        out = _read_leaf(state_dir, leaf)  # tensorstore's ValueErrors; a shape the metadata disagrees with
    integrity.verify_host(leaf.name, out, leaf.checksum, f"checkpoint {state_dir}")
    return out


def _read_leaf(state_dir: str, leaf: LeafInfo) -> np.ndarray:
    directory = epath.Path(state_dir)
    use_ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(directory)
    context = ts.Context(
        {"cache_pool": {"total_bytes_limit": 0}, "cache_pool#ocdbt": {"total_bytes_limit": 0}}
    )
    info = ocp.type_handlers.ParamInfo(
        name=leaf.name,
        parent_dir=directory,
        is_ocdbt_checkpoint=use_ocdbt,
        use_zarr3=leaf.use_zarr3,
        ts_context=context,
    )
    spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=use_ocdbt)
    store = ts.open(ts.Spec(spec), open=True, read=True, context=context).result()
    if tuple(store.shape) != leaf.shape:
        raise ValueError(f"{leaf.name}: checkpoint holds {tuple(store.shape)}, metadata says {leaf.shape}")
    out = np.empty(leaf.shape, store.dtype.numpy_dtype)
    chunk = tuple(store.chunk_layout.read_chunk.shape or leaf.shape)
    for box in _chunk_boxes(leaf.shape, chunk):
        out[box] = store[box].read().result()
    return out.astype(leaf.dtype, copy=False)
