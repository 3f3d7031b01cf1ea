"""Writes what a cluster needs to run `python3 -m MaxText.train` on N hosts: an XPK command and a JobSet.

    python3 -m MaxText.launch --name r1 --num-hosts 4 --image IMAGE [--accelerator tpu --device-type
        v5litepod-16 --chips-per-host 4 --cluster C --num-slices 1 --output DIR] -- configs/base.yml key=value ...

Writes DIR/xpk_command.sh (`xpk workload create ...`, for clusters managed with XPK) and DIR/jobset.yaml (a
Kubernetes JobSet: one Indexed Job of N pods behind a headless service). The manifest sets the environment
that MaxText/parallel/distributed.py reads: JAX_COORDINATOR_ADDRESS is pod 0's stable DNS name under the
JobSet's headless service, JAX_NUM_PROCESSES is N and JAX_PROCESS_ID is the pod's job completion index.
The run name becomes the JobSet and workload name, so `run_name` is set on the train command too.
"""

import argparse
import os
import re
import shlex
import sys

import yaml

from MaxText.parallel import distributed

REPLICATED_JOB = "workers"
CONTAINER = "maxtext"
# Kubernetes sets this annotation on every pod of an Indexed Job (JOB_COMPLETION_INDEX mirrors it).
COMPLETION_INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
_RESOURCE = {"tpu": "google.com/tpu", "gpu": "nvidia.com/gpu"}


def parse_args(argv) -> argparse.Namespace:
    """The launcher's arguments; mistakes exit 2 with argparse's usage line."""
    parser = argparse.ArgumentParser(prog="python3 -m MaxText.launch", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--name", required=True, help="run and workload name (lower case, digits, '-')")
    parser.add_argument("--num-hosts", type=int, required=True, help="hosts (processes), one pod each")
    parser.add_argument("--image", required=True, help="container image built from docker/")
    parser.add_argument("--accelerator", choices=["cpu", "gpu", "tpu"], default="tpu")
    parser.add_argument("--device-type", default="", help="XPK device type, e.g. v5litepod-16 or h100-80gb-8")
    parser.add_argument("--chips-per-host", type=int, default=0, help="accelerators requested per pod")
    parser.add_argument("--cluster", default="CLUSTER", help="XPK cluster name")
    parser.add_argument("--num-slices", type=int, default=1, help="XPK slices (multislice TPU)")
    parser.add_argument("--port", type=int, default=distributed.DEFAULT_PORT, help="coordinator port")
    parser.add_argument("--output", default=".", help="directory for xpk_command.sh and jobset.yaml")
    parser.add_argument("train_args", nargs="+", help="after --: configs/base.yml key=value ...")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", args.name):
        parser.error(f"--name {args.name!r}: expected a DNS label (lower case letters, digits, '-'; <= 40)")
    if args.num_hosts < 1 or args.num_slices < 1:
        parser.error("--num-hosts and --num-slices must be >= 1")
    if args.accelerator != "cpu" and not args.device_type:
        parser.error(f"--accelerator {args.accelerator} needs --device-type (e.g. v5litepod-16, h100-80gb-8)")
    if any(a.startswith("run_name=") for a in args.train_args):
        parser.error("set the run name with --name, not run_name=")
    return args


def train_command(args) -> list:
    return ["python3", "-m", "MaxText.train", *args.train_args, f"run_name={args.name}"]


def coordinator_address(name: str, port: int) -> str:
    """Pod 0 of the JobSet: <jobset>-<replicated job>-<job index>-<pod index>.<subdomain>:port."""
    return f"{name}-{REPLICATED_JOB}-0-0.{name}:{port}"


def jobset_manifest(args) -> dict:
    """A JobSet running `train_command` on args.num_hosts pods that find each other via distributed.py's env."""
    env = [
        {"name": distributed.COORDINATOR_ENV, "value": coordinator_address(args.name, args.port)},
        {"name": distributed.NUM_PROCESSES_ENV, "value": str(args.num_hosts)},
        {
            "name": distributed.PROCESS_ID_ENV,
            "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX_FIELD}},
        },
    ]
    container = {
        "name": CONTAINER,
        "image": args.image,
        "command": train_command(args),
        "env": env,
        "ports": [{"containerPort": args.port}],
    }
    pod = {"restartPolicy": "Never", "subdomain": args.name, "containers": [container]}
    if args.accelerator in _RESOURCE and args.chips_per_host:
        container["resources"] = {"limits": {_RESOURCE[args.accelerator]: args.chips_per_host}}
    if args.accelerator == "tpu":
        pod["nodeSelector"] = {"cloud.google.com/gke-tpu-accelerator-type": args.device_type}
    job = {
        "parallelism": args.num_hosts,
        "completions": args.num_hosts,
        "completionMode": "Indexed",
        "backoffLimit": 0,
        "template": {"spec": pod},
    }
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": args.name},
        "spec": {
            # Any failed pod fails the run; restart it as a whole (it resumes from its last checkpoint).
            "failurePolicy": {"maxRestarts": 0},
            "network": {"enableDNSHostnames": True, "subdomain": args.name},
            "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1, "template": {"spec": job}}],
        },
    }


def xpk_command(args) -> list:
    """`xpk workload create`: XPK provisions the pods and the coordinator environment itself."""
    command = ["xpk", "workload", "create", "--cluster", args.cluster, "--workload", args.name]
    command += ["--docker-image", args.image, "--num-slices", str(args.num_slices)]
    if args.device_type:
        command += ["--device-type", args.device_type]
    return command + ["--command", shlex.join(train_command(args))]


def main(argv) -> int:
    args = parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    xpk_path = os.path.join(args.output, "xpk_command.sh")
    with open(xpk_path, "w", encoding="utf-8") as f:
        f.write("#!/bin/bash\n" + shlex.join(xpk_command(args)) + "\n")
    jobset_path = os.path.join(args.output, "jobset.yaml")
    with open(jobset_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(jobset_manifest(args), f, sort_keys=False)
    print(f"wrote {xpk_path} (run it where xpk is set up)")
    print(f"wrote {jobset_path} (kubectl apply -f {jobset_path}; needs the JobSet controller)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
