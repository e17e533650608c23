"""User-given paths: URLs (``gs://...``) stay as they are, local paths become absolute.

orbax only accepts absolute paths, and a path stored in a checkpoint must mean the same from any
directory, so every place where a user's path enters resolves it here. No eca_jax imports: the
converter, the trainer and the data layer all use it without depending on each other.
"""

from __future__ import annotations

import os


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs such as ``gs://bucket/dir`` (no local file system: no flock, no abspath)."""
    return "://" in os.fspath(path)


def absolute_path(path: str | os.PathLike) -> str:
    """``path`` ("~" expanded) made absolute against the current directory; URLs unchanged."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))
