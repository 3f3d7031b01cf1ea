"""Checkpoints with orbax's CheckpointManager: train state, data-iterator state and metadata per step.

Layout: <run dir>/checkpoints/<step>/{state, data_iter, meta}. Orbax writes each step into
`<step>.orbax-checkpoint-tmp` and renames it to `<step>` only when every item is complete (on object stores
without atomic rename it writes `<step>/commit_success.txt` last instead), so a kill at any moment (SIGKILL
included) leaves at most a temporary directory that `latest_step` ignores and that the next Checkpointer on the
directory deletes (in the background, before its first save). Old steps beyond max_to_keep are deleted in
place; a kill during that leaves a partial *older* step, never the latest. docs/checkpoints.md documents the
parameter tree.

A complete step can still be damaged later (a disk error, a bad copy, a truncated upload). Every read here
checks what it reads: the JSON files parse, meta names its own step, and each array equals what was saved
(meta["checksums"], one fingerprint per array computed on the devices at save time). A damaged step raises
CorruptCheckpoint (a ConfigError: one line naming the step directory and the problem); readers given a run
directory fall back to the newest step that reads, saying which step they skipped and why.
"""

import dataclasses
import json
import os
import sys
from typing import Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from MaxText.checkpoint import adapters, integrity, layer_layout, orbax_io
from MaxText.checkpoint.integrity import CorruptCheckpoint
from MaxText.config.errors import ConfigError

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
        """Starts saving `state` at `step` (in the background when async); returns before it is durable.

        Waits for `state` itself: its fingerprints (meta["checksums"]) are computed first, on the devices.
        """
        meta = dict(meta, format_version=FORMAT_VERSION, step=int(step), checksums=integrity.checksums(state))
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
        """Returns (state, data iterator state, meta). abstract_state carries target shardings.

        Raises CorruptCheckpoint when a file of the step is damaged or an array differs from what was saved.
        """
        step_dir = os.path.join(self.directory, str(step))
        integrity.check_step_files(step_dir)
        with integrity.orbax_reads(step_dir, step_dir):
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data_iter=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        meta = _checked_meta(out.meta, step_dir)
        _checked_data_iter(out.data_iter, step_dir)
        integrity.verify(out.state, meta.get("checksums"), f"checkpoint {step_dir}/state")
        return out.state, out.data_iter, meta

    def restore_newest(self, restore_step: Callable, log: Callable) -> Optional[tuple]:
        """(step, restore_step(step)) for the newest step that restores; None when there are no steps.

        A step that raises CorruptCheckpoint is skipped with one log line saying why; skipped steps newer
        than the one resumed are moved aside to `<step>.unreadable` (kept for inspection), so the run can
        save those steps again. With steps but none restorable, raises ConfigError rather than start over.
        """
        failures = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                result = restore_step(step)
                problem = None
            except CorruptCheckpoint as e:
                result, problem = None, str(e)
            problem = _agreed_problem(problem)
            if problem is not None:
                failures.append((step, problem))
                continue
            for bad, why in failures:
                moved = self._set_aside(bad)
                log(
                    f"warning: skipped checkpoint step {bad} ({why}); resuming from step {step}, moved {moved}"
                )
            return step, result
        if failures:
            listed = _listing([f"step {step}: {why}" for step, why in failures])
            raise ConfigError(
                f"{self.directory}: no checkpoint step can be restored ({listed}); restore the files or move "
                "the damaged steps away to start this run afresh"
            )
        return None

    def _set_aside(self, step: int) -> str:
        """Renames step directory `step` to `<step>.unreadable` (orbax no longer sees it as a step)."""
        source = os.path.join(self.directory, str(step))
        target, n = f"{source}.unreadable", 1
        while os.path.exists(target):
            target, n = f"{source}.unreadable{n}", n + 1
        if jax.process_index() == 0:
            os.rename(source, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint step {step} set aside")
        self._manager.reload()
        return f"{source} to {target}"

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _listing(problems: list, shown: int = 2) -> str:
    """The newest problems in full and a count of the rest, so the line stays readable with many steps."""
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (f"; and {more} older step(s) as well" if more > 0 else "")


def _agreed_problem(problem: Optional[str]) -> Optional[str]:
    """The first process's problem with a step, so every process of a run skips the same steps."""
    if jax.process_count() == 1:
        return problem
    problems = gather_from_processes(problem)
    return next((p for p in problems if p is not None), None)


def _checked_meta(meta, step_dir: str) -> dict:
    """meta, checked to be an object that names the step it belongs to (when it names one)."""
    if not isinstance(meta, dict):
        raise CorruptCheckpoint(f"checkpoint {step_dir}/meta: expected a JSON object")
    name = os.path.basename(step_dir.rstrip("/"))
    if "step" in meta and name.isdigit() and meta["step"] != int(name):
        raise CorruptCheckpoint(
            f"checkpoint {step_dir}/meta: records step {meta['step']!r}, expected {int(name)}"
        )
    return meta


def _checked_data_iter(data_state, step_dir: str) -> dict:
    if not isinstance(data_state, dict):
        raise CorruptCheckpoint(f"checkpoint {step_dir}/data_iter: expected a JSON object")
    return data_state


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


def _step_dirs(path: str) -> tuple:
    """(step directories to try, newest first; whether `path` is one step directory itself)."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "state")):
        return [path], True
    for candidate in (path, checkpoint_dir(path)):
        if os.path.isdir(candidate):
            steps = sorted((int(d) for d in os.listdir(candidate) if d.isdigit()), reverse=True)
            if steps:
                return [os.path.join(candidate, str(n)) for n in steps], False
    raise FileNotFoundError(f"no checkpoint found at {path} (expected a run, checkpoints or step directory)")


_warned = set()


def _warn(message: str) -> None:
    """One line on stderr (first process, once per message): readers below the entry points have no log."""
    if jax.process_index() == 0 and message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr, flush=True)


def _newest_readable(path: str, read: Callable):
    """read(step_dir) of `path`'s step directory, or of a run's newest step that reads without raising
    CorruptCheckpoint (warning about each newer one). A step directory named directly has no fallback."""
    step_dirs, explicit = _step_dirs(path)
    failures = []
    for step_dir in step_dirs:
        try:
            result = read(step_dir)
        except CorruptCheckpoint as e:
            if explicit:
                raise
            failures.append(str(e))
            continue
        for why in failures:
            _warn(f"warning: skipped a damaged checkpoint ({why}); using {step_dir}")
        return result
    raise CorruptCheckpoint(f"{path}: no readable checkpoint ({_listing(failures)})")


def _checked_step_dir(step_dir: str) -> str:
    integrity.check_step_files(step_dir)
    return step_dir


def resolve_step_dir(path: str) -> str:
    """Accepts a step directory (…/checkpoints/<n>), a checkpoints directory or a run directory.

    Of a run, the newest step whose files pass `integrity.check_step_files`; CorruptCheckpoint when none do,
    or when the step directory given fails them.
    """
    return _newest_readable(path, _checked_step_dir)


def layout_plan(step_dir: str, abstract_params) -> list:
    """How the checkpoint's layer layout (scan_layers on/off) differs from abstract_params'; [] = the same.

    Raises ValueError when the parameter trees differ in some other way, CorruptCheckpoint when the
    checkpoint's metadata cannot be read.
    """
    state_dir = os.path.join(step_dir, "state")
    integrity.check_step_files(step_dir)
    with integrity.orbax_reads(state_dir, step_dir):
        meta = ocp.PyTreeCheckpointer().metadata(state_dir)
    stored = getattr(meta, "item_metadata", meta)
    stored = stored.get("params") if hasattr(stored, "get") else None
    if not hasattr(stored, "get") or "decoder" not in stored or "decoder" not in abstract_params:
        return []  # no tree metadata to compare: restore as before and let orbax report a mismatch
    if set(stored["decoder"]) == set(abstract_params["decoder"]):
        return []
    return layer_layout.plan(stored["decoder"], abstract_params["decoder"])


def _nested(path: tuple, value) -> dict:
    """{path[0]: {path[1]: ... value}}: a subtree at `path`, keyed as orbax and the checksums name it."""
    for key in reversed(path):
        value = {key: value}
    return value


def _restore_item(stored, prefix: tuple, subtree):
    """The restore template of one subtree: `subtree` at `prefix`, orbax's PLACEHOLDER (not read) at every
    other stored leaf (a partial restore cannot skip list elements)."""

    def build(node, path):
        if path == prefix:
            return subtree
        if isinstance(node, dict):
            return {k: build(v, path + (k,)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [build(v, path + (str(i),)) for i, v in enumerate(node)]
        return ocp.PLACEHOLDER

    return build(stored, ())


def _load_params_from(step_dir: str, abstract_params, ema: bool = False):
    meta = _read_meta_from(step_dir) if os.path.isdir(os.path.join(step_dir, "meta")) else {}
    base = meta.get(adapters.BASE_KEY)
    if base:  # a partial checkpoint (LoRA adapters): what it holds from here, the rest from its base
        return _load_partial(step_dir, meta, base["path"], base.get("ema", False), abstract_params, ema)
    return _load_held_params(step_dir, abstract_params, ema, meta)


def _load_partial(step_dir: str, meta: dict, base_path: str, base_ema: bool, abstract_params, ema: bool):
    stored = orbax_io.tree_metadata(os.path.join(step_dir, "state")).tree.get("params", {})
    held = adapters.held_mask(abstract_params, stored)
    own = adapters.prune(abstract_params, held)
    rest = adapters.prune(abstract_params, adapters.invert(held))
    loaded = _load_held_params(step_dir, own, ema, meta) if own else {}
    if rest:
        loaded = adapters.merge(loaded, load_params(base_path, rest, ema=base_ema))
    return loaded


def _load_adapters_onto(step_dir: str, base_path: str, abstract_params, ema: bool):
    meta = _read_meta_from(step_dir)
    if adapters.BASE_KEY not in meta:
        raise ConfigError(f"lora_path={step_dir}: not an adapter checkpoint (a LoRA run's step)")
    stored = orbax_io.tree_metadata(os.path.join(step_dir, "state")).tree.get("params", {})
    if not any(jax.tree.leaves(adapters.held_mask(abstract_params, stored))):
        raise ConfigError(
            f"lora_path={step_dir}: the model has no adapter parameters to read (its config has lora_rank=0; "
            "the entry points take lora_rank and the targets from the adapter checkpoint)"
        )
    return _load_partial(step_dir, meta, base_path, ema, abstract_params, False)


def _load_held_params(step_dir: str, abstract_params, ema: bool, meta: dict):
    restacks = layout_plan(step_dir, abstract_params)
    source = layer_layout.stored_abstract(abstract_params, restacks) if restacks else abstract_params
    state_dir = os.path.join(step_dir, "state")
    restore_args = ocp.checkpoint_utils.construct_restore_args(source)
    stored = orbax_io.tree_metadata(state_dir).tree if ema else None
    prefix = orbax_io.ema_prefix(stored) if ema else None
    with integrity.orbax_reads(state_dir, step_dir):
        if prefix is None:
            prefix = ("params",)
            args = ocp.args.PyTreeRestore(
                item={"params": source}, restore_args={"params": restore_args}, partial_restore=True
            )
        else:  # the EMA of the weights the run kept (ema_decay), where its optimizer state holds it
            item = _restore_item(stored, prefix, source)
            args = ocp.args.PyTreeRestore(
                item=item,
                restore_args=_restore_item(
                    jax.tree.map(lambda _: ocp.RestoreArgs(), item), prefix, restore_args
                ),
            )
            _warn(f"{step_dir}: reading the EMA of the weights its run kept (ema_decay), not the raw params")
        restored = ocp.PyTreeCheckpointer().restore(state_dir, args=args)
    for key in prefix:
        restored = restored[int(key) if isinstance(restored, list) else key]
    integrity.verify(_nested(prefix, restored), meta.get("checksums"), f"checkpoint {state_dir}")
    return layer_layout.to_target(restored, restacks, abstract_params) if restacks else restored


def restore_params_only(step_dir: str, abstract_params) -> tuple:
    """(params, data iterator state, meta) of one step, leaving its optimizer state unread (a resume with
    reset_optimizer_state=true). CorruptCheckpoint when the step is damaged."""
    params = _load_params_from(step_dir, abstract_params)
    try:
        data_state = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
            os.path.join(step_dir, "data_iter")
        )
    except FileNotFoundError:
        raise CorruptCheckpoint(f"checkpoint {step_dir}: no data_iter item") from None
    return params, _checked_data_iter(data_state, step_dir), _read_meta_from(step_dir)


def load_params(path: str, abstract_params, ema: bool = False, lora_path: str = ""):
    """Restores only the parameters of a checkpoint (any step directory layout above).

    abstract_params carries target shardings. Optimizer state in the checkpoint is not read, except with
    `ema` the EMA of the weights when the run kept one (ema_decay > 0; config key load_ema_params). A checkpoint
    written with the other scan_layers setting is converted to the target layout (bit-exact). Of a run,
    the newest step that restores; CorruptCheckpoint when none does or the step directory given is damaged.
    A LoRA run's step holds its adapters alone and reads the rest from the base its meta names; with
    `lora_path` (a LoRA run or step) the adapters come from there and everything else from `path`.
    """
    if lora_path:
        return _newest_readable(
            lora_path, lambda step_dir: _load_adapters_onto(step_dir, path, abstract_params, ema)
        )
    return _newest_readable(path, lambda step_dir: _load_params_from(step_dir, abstract_params, ema))


def _read_meta_from(step_dir: str) -> dict:
    integrity.check_step_files(step_dir)
    try:
        meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(step_dir, "meta"))
    except FileNotFoundError:
        raise CorruptCheckpoint(f"checkpoint {step_dir}: no meta item (meta/metadata)") from None
    return _checked_meta(meta, step_dir)


def read_step_meta(step_dir: str) -> dict:
    """The meta item of one step directory; CorruptCheckpoint when it is damaged."""
    return _read_meta_from(step_dir)


def read_meta(path: str) -> dict:
    """The meta item (format version, config, tokenizer identity) of a checkpoint (of a run: its newest
    readable step). CorruptCheckpoint when it is damaged."""
    return _newest_readable(path, _read_meta_from)


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
