"""A cross-process file lock, so that processes of one machine never prepare a dataset at the same time."""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator


@contextlib.contextmanager
def prepare_lock(data_dir: str, name: str) -> Iterator[None]:
    """Holds an exclusive lock on ``<data_dir>/.<name>.lock`` (no-op for remote paths such as gs://)."""
    data_dir = os.fspath(data_dir)
    if "://" in data_dir:  # fcntl cannot lock object stores: prepare those once, beforehand.
        yield
        return
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, f".{name}.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
