"""Runs eca_jax.train.loop.train_and_evaluate on the synthetic data in a fresh process.

Used by tests/test_train.py for what needs its own process: several processes
(jax.distributed on 127.0.0.1), a kill (SIGTERM / SIGKILL) in the middle of a run, another
device count. The last stdout line is the result as JSON.

    python tests/train_worker.py --workdir W --config '{"total_steps": 12}' [--devices 8]
        [--coordinator 127.0.0.1:PORT --num_processes 2 --process_id 0]
        [--step_delay 0.3] [--progress_file F]           # slow steps; F gets "batches=N"
        [--fault hang|enospc --fault_at_save 2 --fault_marker M]  # break the Nth async save
        [--emulate_hosts 4]   # the real digits pipeline as 4 hosts read it (train_helpers.EmulatedHosts);
                              # --config then overrides experiments/configs/smoke.py (dotted keys)
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time


def _parse():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", default="{}")
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--coordinator")
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--step_delay", type=float, default=0.0)
    p.add_argument("--progress_file")
    p.add_argument("--fault", choices=("hang", "enospc"))
    p.add_argument("--fault_at_save", type=int, default=2)
    p.add_argument("--fault_marker")
    p.add_argument("--emulate_hosts", type=int)
    return p.parse_args()


class _FaultFuture:
    """A commit future that makes the background part of an orbax save hang or fail."""

    def __init__(self, kind: str, marker: str | None):
        self.kind, self.marker = kind, marker

    def result(self, timeout=None):
        if self.marker:
            with open(self.marker, "w") as f:
                f.write("saving\n")
        if self.kind == "hang":
            time.sleep(3600)
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")

    def cancel(self):
        return False


def install_save_fault(kind: str, at_save: int, marker: str | None) -> None:
    """Breaks the ``at_save``-th (1-based) save of the train state, after its data is written:
    orbax's background thread waits on our future before it commits (renames) the step."""
    import orbax.checkpoint as ocp

    cls = ocp.handlers.StandardCheckpointHandler
    original = cls.async_save
    count = {"n": 0}

    async def async_save(self, directory, *args, **kwargs):
        futures = list(await original(self, directory, *args, **kwargs) or [])
        count["n"] += 1
        if count["n"] == at_save:
            futures.append(_FaultFuture(kind, marker))
        return futures

    cls.async_save = async_save


def main() -> None:
    args = _parse()
    # The device count is this worker's; other flags (tests/conftest.py's thread settings) are
    # kept, so the worker compiles the same programs as the test process it is compared with.
    others = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join([f"--xla_force_host_platform_device_count={args.devices}", *others])
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax

    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                   initialization_timeout=120)
    from train_helpers import EmulatedHosts, SyntheticData, smoke_config, tiny_config

    from eca_jax.train.loop import train_and_evaluate

    if args.fault:
        install_save_fault(args.fault, args.fault_at_save, args.fault_marker)
    if args.emulate_hosts:
        data, config = EmulatedHosts(args.emulate_hosts), smoke_config(**json.loads(args.config))
    else:
        data = SyntheticData(step_delay=args.step_delay, progress_file=args.progress_file)
        config = tiny_config(**json.loads(args.config))
    result = train_and_evaluate(config, args.workdir, data_module=data)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
