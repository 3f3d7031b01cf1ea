"""User-facing configuration errors: one line, exit code 2, no traceback."""

import difflib
import functools
import sys

EXIT_CONFIG_ERROR = 2


class ConfigError(ValueError):
    """A mistake in the user's configuration. The message is one line naming the key and the problem."""


def suggest(name: str, candidates) -> str:
    """Returns ' (did you mean: a, b?)' for the closest candidates, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


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
