"""The cluster launcher: its JobSet manifest carries exactly the environment that start-up reads."""

import shlex
import subprocess
import sys

import pytest
import yaml

from MaxText import launch, paths
from MaxText.parallel import distributed

ARGS = [
    "--name",
    "r1",
    "--num-hosts",
    "4",
    "--image",
    "gcr.io/p/maxtext:tpu",
    "--device-type",
    "v5litepod-16",
]
ARGS += ["--chips-per-host", "4", "--cluster", "c1", "--num-slices", "2"]
TRAIN = ["configs/base.yml", "model_name=llama2-7b", "steps=100"]


def pod_env(container: dict, completion_index: int) -> dict:
    """The environment Kubernetes gives pod `completion_index`, resolving the downward-API fieldRef."""
    env = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == launch.COMPLETION_INDEX_FIELD
            env[var["name"]] = str(completion_index)
    return env


@pytest.fixture(scope="module", name="written")
def fixture_written(tmp_path_factory):
    out = tmp_path_factory.mktemp("launch")
    proc = subprocess.run(
        [sys.executable, "-m", "MaxText.launch", *ARGS, "--output", str(out), "--", *TRAIN],
        cwd=paths.REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with open(out / "jobset.yaml", encoding="utf-8") as f:
        manifest = yaml.safe_load(f)
    return manifest, (out / "xpk_command.sh").read_text()


def test_jobset_env_contract_matches_startup(written):
    manifest, _ = written
    assert manifest["kind"] == "JobSet" and manifest["metadata"]["name"] == "r1"
    network = manifest["spec"]["network"]
    assert network == {"enableDNSHostnames": True, "subdomain": "r1"}
    (replicated,) = manifest["spec"]["replicatedJobs"]
    job = replicated["template"]["spec"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"] == 4
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python3", "-m", "MaxText.train", *TRAIN, "run_name=r1"]
    assert container["resources"]["limits"] == {"google.com/tpu": 4}
    assert {p["containerPort"] for p in container["ports"]} == {distributed.DEFAULT_PORT}
    # Pod 0's DNS name under the headless service: <jobset>-<replicated job>-<job index>-<pod index>.<subdomain>
    pod0 = f"{manifest['metadata']['name']}-{replicated['name']}-0-0.{network['subdomain']}"
    for index in range(4):
        cluster = distributed.cluster_from_env(pod_env(container, index))
        assert cluster.coordinator == f"{pod0}:{distributed.DEFAULT_PORT}"
        assert (cluster.num_processes, cluster.process_id) == (4, index)


def test_xpk_command(written):
    _, script = written
    assert script.startswith("#!/bin/bash\n")
    argv = shlex.split(script.splitlines()[1])
    assert argv[:3] == ["xpk", "workload", "create"]
    flags = dict(zip(argv[3::2], argv[4::2]))
    assert flags["--workload"] == "r1" and flags["--cluster"] == "c1" and flags["--num-slices"] == "2"
    assert flags["--device-type"] == "v5litepod-16" and flags["--docker-image"] == "gcr.io/p/maxtext:tpu"
    assert shlex.split(flags["--command"]) == ["python3", "-m", "MaxText.train", *TRAIN, "run_name=r1"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--name", "R_1", "--num-hosts", "2", "--image", "i", "--accelerator", "cpu", "--", "c.yml"], "DNS label"),
        (["--name", "r", "--num-hosts", "2", "--image", "i", "--", "c.yml"], "needs --device-type"),
        (["--name", "r", "--num-hosts", "2", "--image", "i", "--accelerator", "cpu", "--", "c.yml", "run_name=x"],
         "set the run name with --name"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        launch.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
