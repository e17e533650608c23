"""Cross-process file locks (``fcntl.flock``) that a crashed or ``kill -9``'ed process never leaves stuck.

The kernel releases a flock when its holder's file descriptor closes, which includes process death,
so no stale lock file ever has to be removed by hand. The lock file itself stays (deleting it would
race with a process that is about to lock it); while held it contains the holder's pid.

Used for dataset preparation (:func:`eca_jax.data._lock.prepare_lock`, waits) and for training
workdirs (:func:`eca_jax.train.checkpoint.workdir_lock`, refuses at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator


class LockHeldError(RuntimeError):
    """A non-blocking :func:`file_lock` found the lock held by another process."""

    def __init__(self, path: str, holder_pid: int | None):
        self.path, self.holder_pid = path, holder_pid
        super().__init__(f"{path} is locked by process {holder_pid if holder_pid else '(unknown pid)'}")


def _holder_pid(fd: int) -> int | None:
    """The pid written into the lock file by its holder (None if not written yet)."""
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, blocking: bool = True) -> Iterator[None]:
    """Holds an exclusive flock on ``path`` (created if missing, with its parent directory).

    ``blocking=False``: raises :class:`LockHeldError` (with the holder's pid) instead of waiting.
    The descriptor is close-on-exec, so programs started by the holder do not inherit the lock.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockHeldError(path, _holder_pid(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
