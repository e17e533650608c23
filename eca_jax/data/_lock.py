"""A cross-process file lock, so that processes of one machine never prepare a dataset at the same time."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from eca_jax._lock import file_lock
from eca_jax._paths import is_remote


@contextlib.contextmanager
def prepare_lock(data_dir: str, name: str) -> Iterator[None]:
    """Holds an exclusive lock on ``<data_dir>/.<name>.lock`` (no-op for remote paths such as gs://)."""
    data_dir = os.fspath(data_dir)
    if is_remote(data_dir):  # fcntl cannot lock object stores: prepare those once, beforehand.
        yield
        return
    with file_lock(os.path.join(data_dir, f".{name}.lock")):
        yield
