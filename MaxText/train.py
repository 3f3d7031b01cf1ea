"""Train (or resume) a model: python3 -m MaxText.train configs/base.yml run_name=NAME key=value ...

An existing run_name resumes from its latest checkpoint. Exit codes: 0 ok, 2 config error, 3 non-finite loss,
4 the processes of a multi-process run did not all join (see MaxText/parallel/distributed.py).
After a run on the built-in corpus it prints a generated sample and the command to decode more.
"""

import os
import shlex
import sys

from MaxText.config import exit_on_config_error, non_default_items, run_dir, save_config
from MaxText.checkpoint.config_overlay import load_config_from_checkpoint


def show_sample(cfg) -> None:
    """Generates from the run's final checkpoint and prints the text and the decode command."""
    from MaxText.inference import session  # pylint: disable=import-outside-toplevel

    decoder = session.DecodeSession.from_checkpoint(cfg, run_dir(cfg))
    prompt = cfg.prompt.split("|")[0]
    text = decoder.generate_text([prompt])["texts"][0]
    command = ["python3", "-m", "MaxText.decode", "configs/base.yml", f"run_name={cfg.run_name}"]
    if non_default_items(cfg).get("base_output_directory"):
        command.append(f"base_output_directory={cfg.base_output_directory}")
    print(f"\n----- sample ({cfg.decode_sampling_strategy}, temperature {cfg.decode_sampling_temperature}):")
    print(f"{prompt}{text}\n-----")
    print(f'generate more with: {shlex.join(command)} prompt="..."', flush=True)


@exit_on_config_error
def main(argv) -> int:
    """Loads the config, records it in the run directory, trains, and shows a sample on the built-in corpus."""
    # Validated before a JAX backend starts; load_parameters_path's saved model keys apply automatically.
    cfg, _ = load_config_from_checkpoint(argv, require_checkpoint=False)
    from MaxText.parallel import distributed  # pylint: disable=import-outside-toplevel

    cluster = distributed.initialize(cfg.jax_distributed_initialization_timeout)  # before any computation
    from MaxText.training import trainer  # pylint: disable=import-outside-toplevel

    if cluster:
        trainer.log(f"joined {trainer.jax.process_count()} processes via {cluster.source}")

    overrides = " ".join(f"{k}={v}" for k, v in non_default_items(cfg).items())
    trainer.log(f"config: {overrides or '(defaults)'}")
    if trainer.jax.process_index() == 0:
        save_config(cfg, os.path.join(run_dir(cfg), "config.yml"))
    code = trainer.train(cfg)
    sample_ok = (
        cfg.dataset_type == "builtin" and cfg.enable_checkpointing and trainer.jax.process_count() == 1
    )
    if code == 0 and sample_ok and _finished(cfg):  # not after a SIGTERM stop: exit promptly then
        show_sample(cfg)
    return code


def _finished(cfg) -> bool:
    from MaxText.checkpoint import checkpointing  # pylint: disable=import-outside-toplevel

    step_dir = checkpointing.resolve_step_dir(run_dir(cfg))
    return int(os.path.basename(step_dir)) >= cfg.steps


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
