"""``python -m eca_jax.train --config experiments/configs/digits.py --workdir DIR [--config.k=v]``

Multi-process (pods, clusters): every process runs the same command. On TPU pods, Slurm and
Open MPI ``--multiprocess`` is enough (``jax.distributed.initialize()`` detects the rest);
elsewhere pass ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``.
Rerunning the same command resumes from the workdir's latest checkpoint.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

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
flags.mark_flags_as_required(["config", "workdir"])


def _maybe_initialize_distributed() -> None:
    import jax  # noqa: PLC0415
    if _COORD.value is not None:
        jax.distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
    elif _MULTI.value:
        jax.distributed.initialize()


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
    from eca_jax.train.checkpoint import (CheckpointMismatchError, CheckpointReadError,  # noqa
                                          CheckpointSaveError, WorkdirInUseError)
    from eca_jax.train.loop import train_and_evaluate  # noqa: PLC0415
    try:
        result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (CheckpointMismatchError, CheckpointReadError, CheckpointSaveError, WorkdirInUseError,
            FileNotFoundError) as e:  # one line naming the problem, no traceback
        sys.exit(f"error: {e}")
    import jax  # noqa: PLC0415
    if jax.process_index() == 0:
        print(json.dumps(result))


def run() -> None:
    try:
        check_config_file(sys.argv[1:])
        check_override_flags(sys.argv[1:])
    except (FileNotFoundError, KeyError) as e:
        sys.exit(f"error: {e.args[0]}")
    app.run(main)


if __name__ == "__main__":
    run()
