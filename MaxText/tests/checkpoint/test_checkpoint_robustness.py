"""Damaged checkpoints and Hugging Face files: every reader refuses them with one line naming the file and the
problem, and a resume falls back to the newest step that reads (saying which step it skipped and why).

One tiny training (3 steps, a checkpoint each) serves every orbax case: each case copies it, truncates or
overwrites one file of step 2 at some offset, and restores. Two resumes train (from step 1, after damage to
step 2) and must match the uninterrupted run bitwise. The safetensors cases need no JAX at all.
"""

import json
import os
import shutil
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorstore as ts

from MaxText import paths
from MaxText.checkpoint import checkpointing, orbax_io
from MaxText.checkpoint.config_overlay import load_config_from_checkpoint
from MaxText.checkpoint.integrity import CorruptCheckpoint
from MaxText.checkpoint.safetensors_io import SafetensorsReader, ShardedWriter
from MaxText.config import ConfigError
from MaxText.tests.helpers import BASE_YML, in_process_cfg, step_records, steps_on_disk
from MaxText.training import trainer

GARBAGE = b"\xff\xfe\x00garbage\x80"


def damage(path, mode: str, where: float) -> None:
    """Truncates the file at fraction `where` of its size, or overwrites bytes there with GARBAGE."""
    size = os.path.getsize(path)
    offset = min(int(size * where), max(size - 4, 0))
    with open(path, "r+b") as f:
        if mode == "truncate":
            f.truncate(offset)
        else:
            f.seek(offset)
            f.write(GARBAGE[: max(1, min(len(GARBAGE), size - offset))])


def one_line(message: str) -> bool:
    return "\n" not in message.strip() and "Traceback" not in message


# ---------------------------------------------------------------------------------------------- orbax


@pytest.fixture(scope="module", name="trained")
def trained_fixture(tmp_path_factory):
    """Run "u": 3 uninterrupted steps with a (synchronous) checkpoint after each. Returns the base directory."""
    base = tmp_path_factory.mktemp("robust")
    assert trainer.train(cfg(base, "u", "steps=3")) == 0
    return base


def cfg(base, run_name, *overrides):
    return in_process_cfg(
        base, run_name, "max_num_checkpoints_to_keep=0", "async_checkpointing=false", *overrides
    )


@pytest.fixture(scope="module", name="setup")
def setup_fixture(trained):
    s = trainer.build(cfg(trained, "u"))
    return s, checkpointing.abstract_with_shardings(s.abstract_state, s.shardings)


def copy_run(trained, tmp_path, name="r", keep_steps=(1, 2)):
    """A copy of run u holding only checkpoint steps `keep_steps`; returns its run directory."""
    run = tmp_path / name
    shutil.copytree(trained / "u", run)
    for step in steps_on_disk(run)[0]:
        if step not in keep_steps:
            shutil.rmtree(run / "checkpoints" / str(step))
    return run


def largest_file(folder) -> str:
    files = [os.path.join(root, f) for root, _, names in os.walk(folder) for f in names]
    return os.path.relpath(max(files, key=os.path.getsize), folder)


def state_file(step_dir, kind: str) -> str:
    """A real file of the step's orbax state, relative to the step directory."""
    state = os.path.join(step_dir, "state")
    if kind == "data":  # the biggest file: array chunks (no checksum of their own)
        return os.path.join("state", largest_file(state))
    if kind == "btree":  # an OCDBT b-tree node of the merged root
        return os.path.join("state", "d", sorted(os.listdir(os.path.join(state, "d")))[0])
    return os.path.join("state", kind)


def damage_array(step_dir, name: str = "params.token_embedder.embedding") -> None:
    """Overwrites bytes in the middle of one stored chunk of array `name`, wherever OCDBT put it (the layout
    of the data files varies from run to run): the chunk's bytes, read through tensorstore, are found in
    the data files."""
    state = os.path.join(str(step_dir), "state", "")
    kvstore = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{state}"}).result()
    chunk = next(k for k in kvstore.list().result() if k.startswith(f"{name}/0".encode()))
    stored = bytes(kvstore.read(chunk).result().value)
    for root, _, names in os.walk(state):
        for file_name in names:
            path = os.path.join(root, file_name)
            with open(path, "rb") as f:
                offset = f.read().find(stored)
            if offset >= 0:
                with open(path, "r+b") as f:
                    f.seek(offset + len(stored) // 2)
                    f.write(GARBAGE)
                return
    raise AssertionError(f"chunk {chunk} of {state} not found in its data files")


CASES = [
    ("meta/metadata", "overwrite", 0.0),
    ("meta/metadata", "overwrite", 0.5),
    ("meta/metadata", "truncate", 0.0),
    ("meta/metadata", "truncate", 0.7),
    ("data_iter/metadata", "overwrite", 0.3),
    ("data_iter/metadata", "truncate", 0.5),
    ("_METADATA", "overwrite", 0.0),
    ("_METADATA", "truncate", 0.5),
    ("array_metadatas/process_0", "overwrite", 0.9),
    ("manifest.ocdbt", "truncate", 0.5),
    ("manifest.ocdbt", "overwrite", 0.2),
    ("btree", "overwrite", 0.5),
    ("data", "truncate", 0.5),
    ("data", "overwrite", 0.0),
    # Inside one array's stored chunk: neither zstd nor OCDBT notices, the fingerprints do.
    ("array:params.decoder.layers.mlp.wi_0.kernel", "overwrite", None),
    ("array:opt_state.1.0.mu.decoder.layers.mlp.wo.kernel", "overwrite", None),
]


def case_path(step_dir, name: str) -> str:
    if name.startswith(("meta/", "data_iter/")):
        return name
    return state_file(step_dir, name)


@pytest.mark.parametrize("name, mode, where", CASES, ids=[f"{n}-{m}-{w}" for n, m, w in CASES])
def test_damaged_step_is_refused_with_one_line(trained, setup, tmp_path, name, mode, where):
    run = copy_run(trained, tmp_path)
    step_dir = run / "checkpoints" / "2"
    if name.startswith("array:"):
        rel = name.split(":")[1].replace(".", "/")  # the checksum key of orbax's dotted name
        damage_array(step_dir, name.split(":")[1])
    else:
        rel = case_path(step_dir, name)
        damage(step_dir / rel, mode, where)
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(run), 0, False)
    try:
        with pytest.raises(CorruptCheckpoint) as e:
            ckpt.restore(2, setup[1])
        ckpt.restore(1, setup[1])  # the older step still reads
    finally:
        ckpt.close()
    message = str(e.value)
    assert one_line(message) and str(step_dir) in message and len(message) < 600, message
    if name.startswith(("meta/", "data_iter/", "_METADATA", "array_metadatas")):
        assert rel in message  # the damaged JSON file is named
    if name.startswith("array:"):
        assert f"array {rel} differs from what was saved" in message


def resume(trained, tmp_path, capsys, rel_kind, mode, where):
    """Damages step 2 of a copy of u (steps 1, 2 kept) and resumes it to step 3: (run dir, stdout)."""
    run = copy_run(trained, tmp_path)
    step_dir = run / "checkpoints" / "2"
    if rel_kind == "array":
        damage_array(step_dir)
    else:
        damage(step_dir / case_path(step_dir, rel_kind), mode, where)
    capsys.readouterr()
    assert trainer.train(cfg(tmp_path, "r", "steps=3")) == 0
    return run, capsys.readouterr().out


@pytest.mark.parametrize(
    "rel_kind, mode, where, why",
    [
        ("meta/metadata", "overwrite", 0.0, "meta/metadata: byte 0 (0xff) is not UTF-8 text"),
        ("array", None, None, "array params/token_embedder/embedding differs from what was saved"),
    ],
    ids=["meta_garbage", "array_bytes"],
)
def test_resume_skips_a_damaged_latest_step_and_continues_bitwise(
    trained, tmp_path, capsys, rel_kind, mode, where, why
):
    seen = len(step_records(trained / "u"))  # the copy starts with u's records
    run, out = resume(trained, tmp_path, capsys, rel_kind, mode, where)
    skipped = [line for line in out.splitlines() if "skipped checkpoint step 2" in line]
    assert len(skipped) == 1 and why in skipped[0] and "resuming from step 1" in skipped[0], out
    assert f"{run / 'checkpoints' / '2'}.unreadable" in skipped[0]  # kept for inspection, not deleted
    assert "resumed run 'r' from step 1 " in out
    assert steps_on_disk(run) == ([1, 2, 3], ["2.unreadable"])
    uninterrupted = {r["step"]: (r["loss"], r["grad_norm"]) for r in step_records(trained / "u")}
    redone = step_records(run)[seen:]
    assert [r["step"] for r in redone] == [2, 3]
    assert [(r["loss"], r["grad_norm"]) for r in redone] == [uninterrupted[2], uninterrupted[3]]


def test_resume_with_every_step_damaged_is_a_config_error(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    damage(run / "checkpoints" / "2" / "meta" / "metadata", "truncate", 0.5)
    damage_array(run / "checkpoints" / "1")
    with pytest.raises(ConfigError) as e:
        trainer.train(cfg(tmp_path, "r", "steps=3"))
    message = str(e.value)
    assert one_line(message), message
    assert message.startswith(f"{run / 'checkpoints'}: no checkpoint step can be restored (step 2: ")
    assert "meta/metadata: not valid JSON" in message and "step 1: " in message
    assert steps_on_disk(run) == ([1, 2], [])  # nothing moved, nothing new


def test_readers_fall_back_for_a_run_and_refuse_a_named_step(trained, setup, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    step1, step2 = run / "checkpoints" / "1", run / "checkpoints" / "2"
    damage_array(step2)
    abstract_params = setup[1].params
    capsys.readouterr()
    params = checkpointing.load_params(str(run), abstract_params)  # a run: falls back to step 1
    err = capsys.readouterr().err
    assert "warning: skipped a damaged checkpoint" in err and f"using {step1}" in err and one_line(err)
    want = checkpointing.load_params(str(step1), abstract_params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)))
    with pytest.raises(CorruptCheckpoint, match=f"checkpoint {step2}.*token_embedder[./]embedding"):
        checkpointing.load_params(str(step2), abstract_params)  # named directly: no fallback

    damage(step2 / "meta" / "metadata", "overwrite", 0.0)
    assert checkpointing.resolve_step_dir(str(run)) == str(step1)
    assert checkpointing.read_meta(str(run))["step"] == 1
    with pytest.raises(CorruptCheckpoint, match=f"checkpoint {step2}/meta/metadata: byte 0 .* not UTF-8"):
        checkpointing.read_meta(str(step2))
    argv = [BASE_YML, f"load_parameters_path={step2}"]
    with pytest.raises(ConfigError, match=f"{step2}/meta/metadata"):
        load_config_from_checkpoint(argv, require_checkpoint=True)

    damage(step1 / "meta" / "metadata", "truncate", 0.5)
    with pytest.raises(CorruptCheckpoint) as e:
        checkpointing.read_meta(str(run))
    assert str(e.value).startswith(f"{run}: no readable checkpoint (") and one_line(str(e.value))


def test_host_reads_verify_the_same_fingerprints(trained, tmp_path):
    # maxtext_to_hf reads leaf by leaf with numpy: its fingerprints must equal the devices' at save time.
    run = copy_run(trained, tmp_path)
    state = str(run / "checkpoints" / "2" / "state")
    leaves = orbax_io.leaf_metadata(state)
    assert len(leaves) > 5 and all(leaf.checksum for leaf in leaves.values()), leaves
    for leaf in leaves.values():
        orbax_io.read_leaf(state, leaf)  # raises if a fingerprint differed
    name = "params/token_embedder/embedding"
    meta_file = run / "checkpoints" / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["checksums"][name] = "float32:0123456789abcdef"  # as if the array's bytes had changed
    meta_file.write_text(json.dumps(meta))
    leaf = orbax_io.leaf_metadata(state)[tuple(name.split("/"))]
    with pytest.raises(CorruptCheckpoint) as e:
        orbax_io.read_leaf(state, leaf)
    message = str(e.value)
    assert (
        one_line(message) and f"checkpoint {state}: array params.token_embedder.embedding differs" in message
    )


def test_scan_layers_conversion_verifies_the_stored_layout(trained, setup, tmp_path):
    # Fingerprints are of the stored (scanned) arrays: checked before restacking into layers_<i>.
    s = trainer.build(cfg(trained, "u", "scan_layers=false"))
    unscanned = checkpointing.abstract_with_shardings(s.abstract_state, s.shardings).params
    step2 = copy_run(trained, tmp_path, "intact") / "checkpoints" / "2"
    params = checkpointing.load_params(str(step2), unscanned)
    scanned = checkpointing.load_params(str(step2), setup[1].params)
    assert np.array_equal(
        params["decoder"]["layers_1"]["mlp"]["wo"]["kernel"],
        scanned["decoder"]["layers"]["mlp"]["wo"]["kernel"][:, 1],
    )
    # A fresh copy: orbax may serve chunks of a path it has read from its in-process cache.
    step2 = copy_run(trained, tmp_path, "damaged") / "checkpoints" / "2"
    damage_array(step2)
    with pytest.raises(CorruptCheckpoint, match="token_embedder[./]embedding"):
        checkpointing.load_params(str(step2), unscanned)


# ----------------------------------------------------------------------------------------- safetensors


def write_safetensors(directory) -> dict:
    """model.safetensors with two tensors (float32 and bfloat16); returns the tensors."""
    import ml_dtypes  # pylint: disable=import-outside-toplevel

    tensors = {
        "a.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b.bias": np.linspace(-1, 1, 5).astype(ml_dtypes.bfloat16),
    }
    os.makedirs(directory, exist_ok=True)
    writer = ShardedWriter(str(directory), [(k, v.shape, v.dtype) for k, v in tensors.items()], 2**40)
    for k, v in tensors.items():
        writer.write(k, v)
    writer.close()
    return tensors


def header_length(path) -> int:
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


def raw_safetensors(path, header, data: bytes = b"\0" * 64) -> None:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)


def refused(directory, message: str) -> str:
    with pytest.raises(ConfigError) as e:
        SafetensorsReader(str(directory))
    text = str(e.value)
    assert one_line(text) and message in text and os.path.join(str(directory), "") in text, text
    return text


# (what, offset in the file: an int, or "length+k" for k bytes into the JSON header, or -k from the end)
SAFETENSORS_DAMAGE = [
    ("truncate", 0, "too short for the 8-byte header length"),
    ("truncate", 5, "too short for the 8-byte header length"),
    ("truncate", "header+10", "exceeds the"),
    ("truncate", -3, "ends at data byte"),
    ("overwrite", 0, "exceeds the"),
    ("overwrite", 7, "exceeds the"),
    ("overwrite", "header+0", "header is not UTF-8 text"),
    ("overwrite", "header+20", "header is not"),
]


@pytest.mark.parametrize(
    "mode, offset, message", SAFETENSORS_DAMAGE, ids=[f"{m}-{o}" for m, o, _ in SAFETENSORS_DAMAGE]
)
def test_damaged_safetensors_file_is_refused(tmp_path, mode, offset, message):
    write_safetensors(tmp_path)
    path = tmp_path / "model.safetensors"
    size = os.path.getsize(path)
    if isinstance(offset, str):
        offset = 8 + int(offset.split("+")[1])
    elif offset < 0:
        offset += size
    with open(path, "r+b") as f:
        if mode == "truncate":
            f.truncate(offset)
        else:
            f.seek(offset)
            f.write(GARBAGE)
    refused(tmp_path, message)


def test_overwritten_tensor_bytes_read_as_they_are(tmp_path):
    # The format has no checksum: bytes overwritten inside the data are read back, never misplaced.
    tensors = write_safetensors(tmp_path)
    path = tmp_path / "model.safetensors"
    with open(path, "r+b") as f:
        f.seek(8 + header_length(path))
        f.write(np.float32(-7).tobytes())
    reader = SafetensorsReader(str(tmp_path))
    got = np.array(reader.get("a.weight"))
    assert got.flat[0] == -7 and np.array_equal(got.flat[1:], tensors["a.weight"].flat[1:])
    assert np.array_equal(np.array(reader.get("b.bias")), tensors["b.bias"])


GOOD = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
BAD_HEADERS = [
    (b"[1, 2]", "header is a JSON list, expected an object"),
    (b"{not json", "header is not valid JSON"),
    ({"__metadata__": "x", "t": GOOD}, "__metadata__ is not an object"),
    ({"t": [1]}, "tensor 't': header entry is not an object"),
    ({"t": {**GOOD, "dtype": "F7"}}, "tensor 't' has unsupported dtype 'F7'"),
    ({"t": {**GOOD, "dtype": 3}}, "unsupported dtype 3"),
    ({"t": {**GOOD, "shape": "2x2"}}, "shape '2x2' is not a list of non-negative integers"),
    ({"t": {**GOOD, "shape": [2, -2]}}, "is not a list of non-negative integers"),
    ({"t": {**GOOD, "data_offsets": [0]}}, "data_offsets [0] is not [begin, end]"),
    ({"t": {**GOOD, "data_offsets": [16, 0]}}, "hold -16 bytes, but F32[2, 2] needs 16"),
    ({"t": {**GOOD, "data_offsets": [0, 12]}}, "hold 12 bytes, but F32[2, 2] needs 16"),
    ({"t": {**GOOD, "data_offsets": [60, 76]}}, "tensor 't' ends at data byte 76, but the file holds 64"),
    ({"t": GOOD, "u": {**GOOD, "data_offsets": [8, 24]}}, "tensors 't' and 'u' overlap"),
]


@pytest.mark.parametrize("header, message", BAD_HEADERS, ids=[f"header{i}" for i in range(len(BAD_HEADERS))])
def test_garbled_header_is_refused(tmp_path, header, message):
    raw_safetensors(tmp_path / "model.safetensors", header)
    refused(tmp_path, message)


def test_damaged_index_or_duplicate_tensors_are_refused(tmp_path):
    write_safetensors(tmp_path / "one")
    index = tmp_path / "one" / "model.safetensors.index.json"
    index.write_bytes(b"\xff{")
    refused(tmp_path / "one", "model.safetensors.index.json: not a JSON object")
    index.write_text(json.dumps({"weight_map": {"a.weight": "model-00002-of-00002.safetensors"}}))
    refused(tmp_path / "one", "names model-00002-of-00002.safetensors, which is not in")
    index.write_text(json.dumps({"weight_map": ["model.safetensors"]}))
    refused(tmp_path / "one", "weight_map is missing or not an object of file names")
    os.remove(index)
    shutil.copy(tmp_path / "one" / "model.safetensors", tmp_path / "one" / "copy.safetensors")
    refused(tmp_path / "one", "tensor 'a.weight' is also in")


def test_convert_cli_on_a_garbled_safetensors_exits_2_with_one_line(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = tmp_path / "hf"
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300, max_position_embeddings=128,
    )  # fmt: skip
    config.save_pretrained(str(hf))
    write_safetensors(hf)
    with open(hf / "model.safetensors", "r+b") as f:  # the user's case: a length prefix gone wrong
        f.write(b"\xff" * 8)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [
        sys.executable,
        "-m",
        "MaxText.convert",
        "hf_to_maxtext",
        "--input",
        str(hf),
        "--output",
        str(tmp_path / "out"),
    ]
    proc = subprocess.run(
        cmd, cwd=paths.REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{hf / 'model.safetensors'}: header length 18446744073709551615 exceeds" in err
    assert not (tmp_path / "out").exists()
