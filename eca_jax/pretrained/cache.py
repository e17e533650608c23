"""Where pretrained weights live on disk.

``$ECA_JAX_CACHE`` (default ``$XDG_CACHE_HOME/eca_jax``, else ``~/.cache/eca_jax``)::

    hub/                      huggingface_hub's cache (its own layout: models--timm--.../blobs, snapshots)
    downloads/<filename>      plain-HTTP files, and where a person puts the release's files
    converted/<model>.<tag>/  the converted Flax checkpoint (eca_jax.checkpoints.converted layout)
    quarantine/<time>-<name>  files that failed their size / hash / architecture check

The environment is read at each call (not at import), so tests and users can repoint it any time.
"""
from __future__ import annotations

import os
import shutil
import time

ENV = "ECA_JAX_CACHE"


def root() -> str:
    """The cache root (absolute; not created)."""
    explicit = os.environ.get(ENV)
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "eca_jax")


def hub_dir() -> str:
    return os.path.join(root(), "hub")


def downloads_dir() -> str:
    return os.path.join(root(), "downloads")


def converted_dir(name: str) -> str:
    """Directory of the converted weights ``name`` (``model.tag``)."""
    return os.path.join(root(), "converted", name)


def quarantine(path: str) -> str:
    """Moves ``path`` out of the way into ``quarantine/`` (kept for inspection); returns its new path."""
    target_dir = os.path.join(root(), "quarantine")
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.path.basename(path)}")
    shutil.move(os.path.realpath(path), target)
    if os.path.islink(path):   # huggingface_hub's snapshot link to the moved blob
        os.unlink(path)
    return target


def size_of(path: str) -> int:
    """Bytes under ``path`` (a file or a directory tree; 0 if absent)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
