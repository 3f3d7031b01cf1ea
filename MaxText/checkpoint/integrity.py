"""Is a checkpoint step what was saved? File checks, array fingerprints and one-line descriptions of failures.

Orbax and tensorstore detect some damage themselves (OCDBT b-tree nodes carry CRC-32C checksums, zstd frames
have headers) and report it as long multi-line errors; JSON files they read raise a bare UnicodeDecodeError.
Array chunks have no checksum of their own, so a byte flipped inside one restores silently: the fingerprints
that `Checkpointer.save` records in meta["checksums"] catch that. Checkpoints written before fingerprints
existed (or by the converters) have none, and their arrays are taken as they read.
"""

import contextlib
import functools
import json
import logging
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from MaxText.config.errors import ConfigError

# JSON files orbax reads when restoring a step (relative to the step directory); checked first so that a
# damaged one is named, not reported as a decoding error somewhere inside orbax.
JSON_FILES = ("meta/metadata", "data_iter/metadata")
STATE_JSON_FILES = ("_METADATA",)
STATE_JSON_DIRS = ("array_metadatas",)
_MAX_PROBLEM = 400  # characters: tensorstore's messages chain every layer's context


class CorruptCheckpoint(ConfigError):
    """A checkpoint step whose files cannot be read or differ from what was saved. One line: the step
    directory, the file or array, and the problem."""


def read_json(path: str, where: str) -> dict:
    """The JSON object in file `path`; CorruptCheckpoint naming `where` (the file as the user knows it)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CorruptCheckpoint(f"{where}: cannot be read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptCheckpoint(
            f"{where}: byte {e.start} (0x{raw[e.start]:02x}) is not UTF-8 text; expected a JSON object"
        ) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if not text.strip():
            raise CorruptCheckpoint(f"{where}: is empty; expected a JSON object") from None
        raise CorruptCheckpoint(
            f"{where}: not valid JSON at character {e.pos} of {len(text)} ({e.msg}); the file is truncated "
            "or overwritten"
        ) from None
    if not isinstance(value, dict):
        raise CorruptCheckpoint(f"{where}: holds a JSON {type(value).__name__}, expected an object")
    return value


def check_state_files(state_dir: str) -> None:
    """Every JSON file orbax reads in an orbax PyTree directory parses (CorruptCheckpoint naming it)."""
    if not os.path.isdir(state_dir):
        raise CorruptCheckpoint(f"checkpoint {state_dir}: no such directory")
    paths = [os.path.join(state_dir, rel) for rel in STATE_JSON_FILES]
    for rel in STATE_JSON_DIRS:
        folder = os.path.join(state_dir, rel)
        if os.path.isdir(folder):
            paths += [os.path.join(folder, name) for name in sorted(os.listdir(folder))]
    for path in paths:
        if os.path.isfile(path):
            read_json(path, f"checkpoint {path}")


def check_step_files(step_dir: str) -> None:
    """The step has a state item, and every JSON file orbax will read in it parses (CorruptCheckpoint)."""
    check_state_files(os.path.join(step_dir, "state"))
    for rel in JSON_FILES:
        path = os.path.join(step_dir, rel)
        if os.path.isfile(path):
            read_json(path, f"checkpoint {path}")


@contextlib.contextmanager
def orbax_reads(where: str, base: str):
    """Runs an orbax (or tensorstore) read: an error that means damaged files becomes CorruptCheckpoint
    naming `where` (paths in the message relative to `base`); others (out of memory, ...) pass through."""
    _filter_abandoned_reads()
    try:
        yield
    except Exception as e:  # pylint: disable=broad-exception-caught  # orbax raises bare Exceptions
        if not is_read_error(e):
            raise
        raise CorruptCheckpoint(f"checkpoint {where}: {describe(e, base)}") from e


def _abandoned_read(e) -> bool:
    """Whether `e` is the echo of an array read orbax abandoned after another failed: its coroutine's
    error, a tensorstore error nobody retrieved, or a callback to the event loop orbax already closed."""
    text = str(e)
    return (
        (isinstance(e, RuntimeError) and text == "Event loop is closed")
        or (_bare(e) and text.startswith("Encountered error while reading array index"))
        or (isinstance(e, ValueError) and "tensorstore_spec" in text)
    )


class _AbandonedReadsFilter(logging.Filter):
    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        unretrieved = record.getMessage().startswith(("Task exception", "Future exception"))
        return not (unretrieved and _abandoned_read(exc))


_filtering = []


def _filter_abandoned_reads() -> None:
    """When one array read fails, orbax abandons the others, and each reports later from tensorstore's
    threads or the garbage collector (sys.unraisablehook, asyncio's log) with a spec dump per array, after
    the failure itself was reported in one line. Drop exactly those echoes; installed before the first
    read because they can arrive before orbax's error does. Nothing else is filtered."""
    if _filtering:
        return
    _filtering.append(sys.unraisablehook)

    def hook(unraisable):
        if not _abandoned_read(unraisable.exc_value):
            _filtering[0](unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_AbandonedReadsFilter())


def _bare(e: BaseException) -> bool:
    return e.__class__ is Exception


def is_read_error(e: BaseException) -> bool:
    """Whether an exception from an orbax restore means the files are damaged (rather than, say, out of
    memory). Tensorstore raises ValueError; orbax wraps a failed array read in a bare Exception."""
    return isinstance(e, (ValueError, OSError, EOFError)) or _bare(e)


def describe(e: BaseException, step_dir: str) -> str:
    """One line of what an orbax/tensorstore read error says went wrong, paths relative to step_dir."""
    # The bare Exception orbax raises prints a tensorstore spec; its cause holds tensorstore's message.
    while _bare(e) and (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    text = " ".join(str(e).split())
    text = re.sub(r"\s*\[tensorstore_spec[^=]*=.*$", "", text)
    text = re.sub(r'Error opening "\w+" driver: ', "", text)
    text = text.replace(step_dir.rstrip("/") + "/", "")
    if not text:
        text = type(e).__name__
    return text if len(text) <= _MAX_PROBLEM else text[: _MAX_PROBLEM - 3] + "..."


def _words(x: jax.Array) -> jax.Array:
    """x's bytes as uint32 words: one per element (zero-extended when narrower), more when wider."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    narrow = {1: jnp.uint8, 2: jnp.uint16}.get(x.dtype.itemsize)
    if narrow is not None:
        return lax.bitcast_convert_type(x, narrow).astype(jnp.uint32)
    return lax.bitcast_convert_type(x, jnp.uint32)  # 64-bit types gain a trailing axis of 2


def _fingerprint(x: jax.Array) -> jax.Array:
    """Two position-weighted sums of x's words, mod 2**32: any change of one word changes both (the
    weights are odd), and integer sums do not depend on the reduction order, so neither the sharding nor
    the device count changes the result."""
    words = _words(x)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):  # the flat index, built per axis so nothing is resharded
        index = index + lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= words.shape[axis]
    first = jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)
    second = jnp.sum((words ^ (index * jnp.uint32(0x9E3779B9))) * jnp.uint32(0x85EBCA6B), dtype=jnp.uint32)
    return jnp.stack([first, second])


@functools.lru_cache(maxsize=None)
def _fingerprints(mesh):
    """The jitted fingerprints of a list of arrays, replicated (so every process can read them)."""
    out = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    return jax.jit(lambda leaves: jnp.stack([_fingerprint(x) for x in leaves]), out_shardings=out)


_MASK = 2**32 - 1
_HOST_BLOCK = 2**22  # words per block: bounds the uint64 temporaries of a host fingerprint


def host_fingerprint(array: np.ndarray) -> str:
    """`checksums`' fingerprint of one host array, computed with numpy (no device, no compilation), block by
    block. uint64 arithmetic wraps mod 2**64, so reducing mod 2**32 at the end gives the device's result."""
    a = np.ascontiguousarray(array)
    words = a.view({1: np.uint8, 2: np.uint16}.get(a.dtype.itemsize, np.uint32)).reshape(-1)
    first = second = 0
    for start in range(0, words.size, _HOST_BLOCK):
        w = words[start : start + _HOST_BLOCK].astype(np.uint64)
        i = np.arange(start, start + w.size, dtype=np.uint64)
        first += int(np.sum(w * (2 * i + 1), dtype=np.uint64))
        mixed = (w ^ ((i * np.uint64(0x9E3779B9)) & np.uint64(_MASK))) * np.uint64(0x85EBCA6B)
        second += int(np.sum(mixed, dtype=np.uint64))
    return f"{array.dtype}:{first & _MASK:08x}{second & _MASK:08x}"


def verify_host(name: str, array: np.ndarray, want, where: str) -> None:
    """`verify` for one host array whose saved fingerprint is `want` (None: not recorded)."""
    if not isinstance(want, str) or want.split(":")[0] != str(array.dtype):
        return
    got = host_fingerprint(array)
    if got != want:
        raise CorruptCheckpoint(
            f"{where}: array {name} differs from what was saved (checksum {got}, saved {want}); "
            "its files are damaged"
        )


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def checksums(tree) -> dict:
    """{"params/decoder/...": "float32:<16 hex digits>"} for every array of `tree` (a collective on a
    multi-process mesh: call it on all processes). Paths are the same for a TrainState and a dict."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not flat:
        return {}
    leaves = [leaf for _, leaf in flat]
    sharding = getattr(leaves[0], "sharding", None)
    sums = np.asarray(jax.device_get(_fingerprints(getattr(sharding, "mesh", None))(leaves)))
    return {
        "/".join(_key_name(k) for k in path): f"{leaf.dtype}:{int(a):08x}{int(b):08x}"
        for (path, leaf), (a, b) in zip(flat, sums)
    }


def verify(tree, saved, where: str) -> None:
    """Each array of `tree` has the fingerprint recorded at save time (CorruptCheckpoint naming the first
    that differs). Arrays the record lacks, or restored in another dtype than saved, are not compared."""
    if saved is None:
        return
    if not isinstance(saved, dict):
        raise CorruptCheckpoint(f"{where}: meta's checksums are a {type(saved).__name__}, expected an object")
    for name, got in checksums(tree).items():
        want = saved.get(name)
        if isinstance(want, str) and want.split(":")[0] == got.split(":")[0] and want != got:
            raise CorruptCheckpoint(
                f"{where}: array {name} differs from what was saved (checksum {got}, saved {want}); "
                "its files are damaged"
            )
