"""Where the repository's configs/ and assets/ live, so entry points work from any directory."""

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve(path: str) -> str:
    """Resolves a user path: absolute as is; relative to the cwd if it exists there, else to the repo root."""
    if not path or os.path.isabs(path):
        return path
    if os.path.exists(path):
        return os.path.abspath(path)
    candidate = os.path.join(REPO_ROOT, path)
    return candidate if os.path.exists(candidate) else os.path.abspath(path)
