"""Checkpoints with orbax's CheckpointManager: train state, data-iterator state and metadata per step.

Layout: <run dir>/checkpoints/<step>/{state, data_iter, meta}. Orbax writes each step into
`<step>.orbax-checkpoint-tmp` and renames it to `<step>` only when every item is complete (on object stores
without atomic rename it writes `<step>/commit_success.txt` last instead), so a kill at any moment (SIGKILL
included) leaves at most a temporary directory that `latest_step` ignores and that the next Checkpointer on the
directory deletes (in the background, before its first save). Old steps beyond max_to_keep are deleted in
place; a kill during that leaves a partial *older* step, never the latest. docs/checkpoints.md documents the
parameter tree.
"""

import dataclasses
import json
import os
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from MaxText.checkpoint import layer_layout

FORMAT_VERSION = 1
_ITEMS = ("state", "data_iter", "meta")


def abstract_with_shardings(abstract_tree, shardings):
    """ShapeDtypeStructs carrying the target shardings, so restore lands each shard where it belongs."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings
    )


class Checkpointer:
    """Saves and restores (state, data iterator state, meta) under `directory`."""

    def __init__(self, directory: str, max_to_keep: int, async_save: bool):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep or None,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list:
        return list(self._manager.all_steps())

    def save(self, step: int, state, data_state: dict, meta: dict, force: bool = True) -> None:
        """Starts saving `state` at `step` (in the background when async); returns before it is durable."""
        meta = dict(meta, format_version=FORMAT_VERSION, step=int(step))
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data_iter=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=force,
        )

    def restore(self, step: int, abstract_state):
        """Returns (state, data iterator state, meta). abstract_state carries target shardings."""
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data_iter=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return out.state, out.data_iter, out.meta

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def gather_from_processes(item) -> list:
    """Every process's JSON-serializable `item`, in process order (a collective: call it on all processes).

    For what each host knows only in part: the data iterator's position (each host knows its own rows'
    lanes; the merged position is what the primary process saves), the eval set's byte count.
    """
    if jax.process_count() == 1:
        return [item]
    blob = np.frombuffer(json.dumps(item).encode("utf-8"), dtype=np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([blob.size], dtype=np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), dtype=np.uint8)
    padded[: blob.size] = blob
    blobs = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(b[:n]).decode("utf-8")) for b, n in zip(blobs, sizes.tolist())]


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def resolve_step_dir(path: str) -> str:
    """Accepts a step directory (…/checkpoints/<n>), a checkpoints directory or a run directory."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "state")):
        return path
    for candidate in (path, checkpoint_dir(path)):
        if os.path.isdir(candidate):
            steps = sorted(int(d) for d in os.listdir(candidate) if d.isdigit())
            if steps and os.path.isdir(os.path.join(candidate, str(steps[-1]), "state")):
                return os.path.join(candidate, str(steps[-1]))
    raise FileNotFoundError(f"no checkpoint found at {path} (expected a run, checkpoints or step directory)")


def layout_plan(step_dir: str, abstract_params) -> list:
    """How the checkpoint's layer layout (scan_layers on/off) differs from abstract_params'; [] = the same.

    Raises ValueError when the parameter trees differ in some other way.
    """
    meta = ocp.PyTreeCheckpointer().metadata(os.path.join(step_dir, "state"))
    stored = getattr(meta, "item_metadata", meta)
    stored = stored.get("params") if hasattr(stored, "get") else None
    if not hasattr(stored, "get") or "decoder" not in stored or "decoder" not in abstract_params:
        return []  # no tree metadata to compare: restore as before and let orbax report a mismatch
    if set(stored["decoder"]) == set(abstract_params["decoder"]):
        return []
    return layer_layout.plan(stored["decoder"], abstract_params["decoder"])


def load_params(path: str, abstract_params):
    """Restores only the parameters of a checkpoint (any step directory layout above).

    abstract_params carries target shardings. Optimizer state in the checkpoint is not read. A checkpoint
    written with the other scan_layers setting is converted to the target layout (bit-exact).
    """
    step_dir = resolve_step_dir(path)
    restacks = layout_plan(step_dir, abstract_params)
    source = layer_layout.stored_abstract(abstract_params, restacks) if restacks else abstract_params
    checkpointer = ocp.PyTreeCheckpointer()
    restore_args = ocp.checkpoint_utils.construct_restore_args(source)
    restored = checkpointer.restore(
        os.path.join(step_dir, "state"),
        args=ocp.args.PyTreeRestore(
            item={"params": source}, restore_args={"params": restore_args}, partial_restore=True
        ),
    )
    params = restored["params"]
    return layer_layout.to_target(params, restacks, abstract_params) if restacks else params


def read_meta(path: str) -> dict:
    """The meta item (format version, config, tokenizer identity) of a checkpoint."""
    step_dir = resolve_step_dir(path)
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(step_dir, "meta"))


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
