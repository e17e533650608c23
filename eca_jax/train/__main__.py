"""``python -m eca_jax.train --config experiments/configs/digits.py --workdir DIR [--config.k=v]``

Multi-process (pods, clusters): every process runs the same command. On TPU pods, Slurm and
Open MPI ``--multiprocess`` is enough (``jax.distributed.initialize()`` detects the rest);
elsewhere pass ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``.
Rerunning the same command resumes from the workdir's latest checkpoint.

Host faults: SIGTERM to any one process stops all of them at the same step, after a checkpoint
(exit 0); one that comes while the processes start up stops them before their first step. If a
process dies (SIGKILL, crash, lost machine) the others stop instead of waiting in a collective
forever: a failed collective exits at once with a one-line error (exit code 3), and
the coordination service ends every process that is still waiting once the dead one has missed
heartbeats for ``--heartbeat_timeout_seconds`` (JAX's "Terminating process because the JAX
distributed service detected fatal errors", exit by SIGABRT). Rerun all processes to resume from
the last committed checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from eca_jax._paths import absolute_path
from eca_jax.train.config import check_config_file, check_override_flags, validate_config

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. experiments/configs/digits.py (override: --config.k=v).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.csv, TensorBoard, PNG.")
_MULTI = flags.DEFINE_bool("multiprocess", False,
                           "Call jax.distributed.initialize() with cluster auto-detection.")
_COORD = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index (0..N-1).")
_BIND = flags.DEFINE_string("coordinator_bind_address", None,
                            "HOST:PORT the coordinator (process 0) listens on; default: all "
                            "interfaces on the port of --coordinator_address.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 100,
    "Multi-process: a process silent this long is declared dead and all others are stopped "
    "(JAX's default; lower it to fail faster, keep it above the longest network hiccup).")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 300, "Multi-process: seconds to wait for every process to join.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Build everything, train nothing: print the mesh, batches, "
                             "steps, bytes per device, compiled step memory, checkpoint size, input cores.")
_DRY_RATE = flags.DEFINE_float("dry_run_steps_per_second", 1.0, "Step rate for --dry_run's input-cores figure.")
flags.mark_flags_as_required(["config", "workdir"])


EXIT_PEER_LOST = 3  # a collective with the other processes failed (see _exit_peer_lost)


def _maybe_initialize_distributed() -> None:
    import jax  # noqa: PLC0415
    timeouts = dict(initialization_timeout=_INIT_TIMEOUT.value,
                    heartbeat_timeout_seconds=_HEARTBEAT.value)
    if _COORD.value is not None:
        jax.distributed.initialize(_COORD.value, _NPROC.value, _PID.value,
                                   coordinator_bind_address=_BIND.value, **timeouts)
    elif _MULTI.value:
        jax.distributed.initialize(**timeouts)


def _exit_peer_lost(error: Exception, workdir: str) -> None:
    """One line naming the failure, then ``os._exit``: a normal exit would run JAX's shutdown
    barrier, which waits (up to its shutdown timeout) for the process that is gone."""
    import jax  # noqa: PLC0415
    from eca_jax.checkpoints.training import CHECKPOINT_DIRNAME, committed_steps  # noqa: PLC0415
    steps = committed_steps(os.path.join(absolute_path(workdir), CHECKPOINT_DIRNAME))
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    print(f"error: process {jax.process_index()} of {jax.process_count()}: a collective with the "
          f"other processes failed ({first}); another process has probably died. Restart all "
          f"{jax.process_count()} processes with the same command to resume from the last "
          f"committed checkpoint (step {max(steps) if steps else 'none'}).",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PEER_LOST)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    try:
        validate_config(_CONFIG.value)
    except (KeyError, ValueError) as e:
        sys.exit(f"error: {e.args[0] if e.args else e}")
    _maybe_initialize_distributed()
    if _DRY_RUN.value:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)   # nothing to save: SIGTERM ends a dry run
        from eca_jax.train.dry_run import dry_run, format_report  # noqa: PLC0415
        try:
            print(format_report(dry_run(_CONFIG.value, steps_per_second=_DRY_RATE.value)))
        except (KeyError, ValueError) as e:
            sys.exit(f"error: {e.args[0] if e.args else e}")
        return
    from eca_jax.train.checkpoint import (CheckpointMismatchError, CheckpointReadError,  # noqa
                                          CheckpointSaveError, WorkdirInUseError)
    from eca_jax.train.loop import train_and_evaluate  # noqa: PLC0415
    import jax  # noqa: PLC0415
    try:
        result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
            raise
        _exit_peer_lost(e, _WORKDIR.value)
    except (CheckpointMismatchError, CheckpointReadError, CheckpointSaveError, WorkdirInUseError,
            FileNotFoundError) as e:  # one line naming the problem, no traceback
        sys.exit(f"error: {e}")
    if jax.process_index() == 0:
        print(json.dumps(result))


def run() -> None:
    from eca_jax.train.preemption import capture_sigterm_early  # noqa: PLC0415
    capture_sigterm_early()   # a preemption notice while starting up stops cleanly (exit 0)
    try:
        check_config_file(sys.argv[1:])
        check_override_flags(sys.argv[1:])
    except (FileNotFoundError, KeyError) as e:
        sys.exit(f"error: {e.args[0]}")
    app.run(main)


if __name__ == "__main__":
    run()
