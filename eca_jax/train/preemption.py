"""SIGTERM (a preemption notice on clusters and TPU pods) -> save and stop at a step boundary.

The handler only sets a flag; the loop asks :meth:`PreemptionGuard.should_stop` after each
step. With several processes the flag is agreed on with a tiny all-gather (every process must
stop at the same step to save together), done only at ``sync_every`` steps to keep the host
from blocking on every step.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionGuard:
    """Context manager that turns SIGTERM into a flag (restores the old handler on exit)."""

    def __init__(self, sync_every: int = 1):
        self.sync_every = max(1, int(sync_every))
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):  # noqa: ARG002
        self.requested = True

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def should_stop(self, step: int) -> bool:
        """True when any process got SIGTERM (checked collectively at multiples of sync_every)."""
        if jax.process_count() == 1:
            return self.requested
        if step % self.sync_every:
            return False
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.any(flags))
