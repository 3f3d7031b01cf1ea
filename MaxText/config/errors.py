"""User-facing configuration errors: one line, exit code 2, no traceback."""

import difflib
import functools
import importlib
import os
import re
import sys

from MaxText import paths

EXIT_CONFIG_ERROR = 2


class ConfigError(ValueError):
    """A mistake in the user's configuration. The message is one line naming the key and the problem."""


def suggest(name: str, candidates) -> str:
    """Returns ' (did you mean: a, b?)' for the closest candidates, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


# Import names whose pip distribution is spelled differently; the rest install under their import name.
_DISTRIBUTIONS = {"tensorflow_datasets": "tensorflow-datasets", "jinja2": "Jinja2"}


def require(module: str, feature: str, instead: str = ""):
    """Imports and returns `module` (an optional dependency that `feature` needs).

    A missing package is a ConfigError (one line, exit 2) naming the package, the feature and the install
    command pinned as requirements.txt (or constraints.txt) pins it, e.g. "dataset_type='grain' needs the 'grain' package, not installed;
    pip install grain==0.2.18". `instead`, when given, is appended as the alternative. An installed package
    that fails to import for another reason (one of its own dependencies missing) raises as it is.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name not in (top, module):
            raise
        package = _DISTRIBUTIONS.get(top, top)
        alternative = f"; or {instead}" if instead else ""
        raise ConfigError(
            f"{feature} needs the {package!r} package, not installed; pip install {_pinned(package)}{alternative}"
        ) from None


def _pinned(package: str) -> str:
    """`package==version` as requirements.txt (else constraints.txt, for a dependency of a dependency) pins
    it, else the bare name (e.g. when running from an installed wheel, without the repository's files)."""
    key = re.sub(r"[-_.]+", "-", package).lower()
    for pins in ("requirements.txt", "constraints.txt"):
        try:
            with open(os.path.join(paths.REPO_ROOT, pins), encoding="utf-8") as f:
                for line in f:
                    name, sep, version = line.split("#")[0].strip().partition("==")
                    if sep and re.sub(r"[-_.]+", "-", name).lower() == key:
                        return f"{name}=={version}"
        except OSError:
            pass
    return package


def exit_on_config_error(main):
    """Decorates an entry point so a ConfigError prints one line to stderr and exits with code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            sys.exit(EXIT_CONFIG_ERROR)

    return wrapper
