"""Train (or resume) a model: python3 -m MaxText.train configs/base.yml run_name=NAME key=value ...

An existing run_name resumes from its latest checkpoint. Exit codes: 0 ok, 2 config error, 3 non-finite loss.
"""

import os
import sys

from MaxText.config import exit_on_config_error, load_config, non_default_items, run_dir, save_config


@exit_on_config_error
def main(argv) -> int:
    cfg = load_config(argv)  # validated before JAX is imported or a backend starts
    from MaxText.training import trainer  # pylint: disable=import-outside-toplevel

    overrides = " ".join(f"{k}={v}" for k, v in non_default_items(cfg).items())
    trainer.log(f"config: {overrides or '(defaults)'}")
    if trainer.jax.process_index() == 0:
        save_config(cfg, os.path.join(run_dir(cfg), "config.yml"))
    return trainer.train(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
