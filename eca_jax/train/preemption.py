"""SIGTERM (a preemption notice on clusters and TPU pods) -> save and stop at a step boundary.

The handler only sets a flag; the loop asks :meth:`PreemptionGuard.should_stop` after each
step. With several processes the flag is agreed on with a tiny all-gather (every process must
stop at the same step to save together), done only at ``sync_every`` steps to keep the host
from blocking on every step.

A notice can also come while the trainer starts (imports, distributed init, restore, compiles:
minutes on a pod). ``python -m eca_jax.train`` calls :func:`capture_sigterm_early` first, so
such a notice is kept as a pending request instead of killing the process; the loop's guard
takes it over and all processes stop before training a step (:meth:`PreemptionGuard.stop_now`).
"""

from __future__ import annotations

import signal
import threading

import numpy as np

_pending = threading.Event()   # SIGTERM seen before a PreemptionGuard was entered


def _record_pending(signum, frame) -> None:  # noqa: ARG001
    _pending.set()


def capture_sigterm_early() -> None:
    """From now on SIGTERM sets a pending preemption request instead of ending the process (main
    thread only). Imports nothing heavy, so it can run before JAX and TensorFlow load."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _record_pending)


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
        if _pending.is_set():   # a notice during startup: this guard takes it over
            self.requested = True
            _pending.clear()
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def should_stop(self, step: int) -> bool:
        """True when any process got SIGTERM (checked collectively at multiples of sync_every)."""
        if step % self.sync_every and _process_count() > 1:
            return False
        return self.stop_now()

    def stop_now(self) -> bool:
        """True when any process got SIGTERM, now (with several processes a collective: every
        process must call it at the same point)."""
        if _process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils  # noqa: PLC0415
        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))


def _process_count() -> int:
    import jax  # noqa: PLC0415
    return jax.process_count()
