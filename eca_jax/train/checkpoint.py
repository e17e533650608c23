"""Writing and restoring the training state with orbax: async saves, keep-last-K plus best,
exact resume, safe to kill. (Reading a checkpoint's weights for evaluation, prediction, export or
``init_from`` is :mod:`eca_jax.checkpoints`.)

Layout: ``<workdir>/checkpoints/<step>/{state, data_iter, metrics}`` plus orbax's root
``metadata`` (the model signature). Each step also carries the signature and the config as
custom metadata, so a single step directory is self-describing.

Safety: orbax writes every step into a temporary directory and renames it once all items and
all processes have committed; a run killed mid-save (even SIGKILL) leaves only a temporary
directory, which the next run ignores and deletes (``cleanup_tmp_directories``). A failed save
(e.g. out of disk) raises :class:`CheckpointSaveError` and leaves earlier steps untouched.

Restoring takes the abstract train state with the *current* mesh's shardings, so a checkpoint
written on N devices restores onto M devices or another mesh shape.

Paths: orbax only accepts absolute paths, so the workdir is resolved against the current
directory first (``absolute_path``; URLs such as ``gs://`` stay as they are). One trainer per
workdir: :func:`workdir_lock`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any, Iterator, Mapping

import jax
import orbax.checkpoint as ocp
from etils import epath

from eca_jax._lock import LockHeldError, file_lock
from eca_jax._paths import absolute_path, is_remote
from eca_jax.checkpoints.errors import CheckpointMismatchError, CheckpointReadError  # noqa: F401 (raised here)
from eca_jax.checkpoints.signature import SIGNATURE_KEYS, check_signature, normalize
from eca_jax.checkpoints.training import CHECKPOINT_DIRNAME, committed_steps, read_root_signature

_policies = ocp.checkpoint_managers


class _DropMetricsWarning(logging.Filter):
    """Intermediate steps are saved without eval metrics on purpose (the best-of policy ignores
    them); orbax warns about each such save."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in str(record.msg)


logging.getLogger("absl").addFilter(_DropMetricsWarning())


class CheckpointSaveError(RuntimeError):
    """Saving a checkpoint failed; the previously committed checkpoints are still usable."""


class WorkdirInUseError(RuntimeError):
    """Another live training process holds the workdir's lock."""


def _lock_name() -> str:
    """One lock file per process index: the processes of one multi-process run share the
    workdir, each locks its own file, and each conflicts with the same index of another run."""
    return f".train.process_{jax.process_index()}.lock"


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """Holds the workdir for this training process; raises WorkdirInUseError if another live
    process holds it. A crashed or killed holder releases it (flock). No-op for URLs (gs://)."""
    workdir = absolute_path(workdir)
    if is_remote(workdir):
        yield
        return
    try:
        with file_lock(os.path.join(workdir, _lock_name()), blocking=False):
            yield
    except LockHeldError as e:
        pid = f"pid {e.holder_pid}" if e.holder_pid else "pid unknown"
        raise WorkdirInUseError(
            f"workdir {workdir} is in use by another training process ({pid}); wait for it to "
            "finish or stop it, or pass another --workdir.") from None


def _top1(metrics: Mapping[str, Any]) -> float:
    return float(metrics["top1"])


def barriers_through_distributed_service() -> None:
    """Makes orbax sync processes with the JAX distributed service's named barriers.

    Orbax's default barrier is ``multihost_utils.sync_global_devices``: a collective over every
    device, which orbax also runs from its async-save finalize thread. Across processes such a
    collective can pair with the main thread's train or eval collectives in another order and
    deadlock the run. Named barriers are safe from any thread and time out. (A 4-process test
    run that hung at its last eval, CI 2026-11-30, first pointed here; the same hang was seen once
    more with named barriers, so it had another cause: see tests/test_multihost.py run_cli.)
    The switch is orbax's absl flag ``experimental_orbax_use_distributed_barrier``; it is set
    here (and marked present, so it reads the same before absl parses a command line) unless a
    command line gave it. Single-process runs have no barriers either way.
    """
    from absl import flags  # noqa: PLC0415 -- absl comes with orbax

    name = "experimental_orbax_use_distributed_barrier"
    if name not in flags.FLAGS:
        if jax.process_count() > 1:
            raise RuntimeError(f"This orbax-checkpoint has no flag {name!r}: its barriers could "
                               "deadlock a multi-process run (see eca_jax.train.checkpoint); "
                               "install the orbax-checkpoint version of requirements.txt.")
        return
    flag = flags.FLAGS[name]
    if not flag.present:
        flag.value = True
        flag.present = 1


def _manager_options(keep: int, keep_best: bool, async_save: bool):
    policy = _policies.LatestN(n=keep)
    if keep_best:
        policy = _policies.AnyPreservationPolicy([policy, _policies.BestN(
            get_metric_fn=_top1, reverse=False, n=1, keep_checkpoints_without_metrics=False)])
    return ocp.CheckpointManagerOptions(
        best_fn=_top1 if keep_best else None, best_mode="max", preservation_policy=policy,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)


class Checkpointer:
    """A CheckpointManager over ``<workdir>/checkpoints`` for one model signature.

    signature: {"model", "num_classes", "model_kwargs"} (+ anything JSON-able, e.g. "config").
    """

    def __init__(self, workdir: str, signature: Mapping[str, Any], *, keep: int = 3,
                 keep_best: bool = True, async_save: bool = True):
        self.directory = epath.Path(absolute_path(workdir)) / CHECKPOINT_DIRNAME
        self.signature = normalize(signature)
        self._discard_root_without_steps()
        existing = read_root_signature(self.directory)
        if existing is not None:
            check_signature(existing, self.signature, f"Workdir {workdir}",
                            " Use another --workdir, or fine-tune from it with "
                            f"--config.init_from={workdir} (and init_from_reset_head=True).")
        root = {k: self.signature.get(k) for k in SIGNATURE_KEYS}
        barriers_through_distributed_service()
        self.manager = ocp.CheckpointManager(
            self.directory, options=_manager_options(keep, keep_best, async_save), metadata=root)
        self.last_committed: int | None = self.manager.latest_step()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state: Any, data_state: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None) -> None:
        """Starts an async save of ``state`` (a pytree of jax.Arrays) at ``step``.

        Blocks only for the device-to-host copy; the write continues in the background. Raises
        CheckpointSaveError if this save or the previous in-flight one failed.
        """
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data_iter=ocp.args.JsonSave(dict(data_state)))
        try:
            self.manager.save(step, args=args, metrics=dict(metrics) if metrics else None,
                              custom_metadata=self.signature, force=True)
        except Exception as e:  # noqa: BLE001 -- any I/O error of orbax/tensorstore
            raise self._error(step, e) from e

    def wait(self) -> None:
        """Blocks until in-flight saves are committed; raises CheckpointSaveError if one failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._error(None, e) from e
        self.last_committed = self.manager.latest_step()

    def _error(self, step: int | None, e: Exception) -> CheckpointSaveError:
        self.manager.reload()
        good = self.manager.latest_step()
        what = f"at step {step}" if step is not None else "(async)"
        return CheckpointSaveError(
            f"Saving the checkpoint {what} in {self.directory} failed: {type(e).__name__}: {e}. "
            f"The last committed checkpoint (step {good}) is intact; fix the cause (e.g. free "
            f"disk space) and rerun the same command to resume from it.")

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores (state, data_iter_state). ``abstract_state``: jax.ShapeDtypeStructs carrying
        the target shardings (the current mesh), e.g. from jax.eval_shape + tree_shardings."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data_iter=ocp.args.JsonRestore()))
        return restored.state, dict(restored.data_iter or {})

    def close(self) -> None:
        self.manager.close()

    def close_quietly(self) -> None:
        """close() that never raises (used on error paths, where the first error matters).

        A run that committed no step (e.g. ``init_from`` failed) leaves no ``checkpoints`` dir."""
        for cleanup in (self.manager.close, self._discard_root_without_steps):
            try:
                cleanup()
            except Exception:  # noqa: BLE001
                pass

    def _discard_root_without_steps(self) -> None:
        """Removes orbax's root ``metadata`` (and the then empty checkpoints dir) when no step is
        committed: it would pin the workdir to a model that never saved anything. Process 0 only."""
        if jax.process_index() != 0 or committed_steps(self.directory):
            return
        if (self.directory / "metadata").is_dir():
            shutil.rmtree(os.fspath(self.directory / "metadata"), ignore_errors=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()  # only if empty: tmp dirs of a killed first save stay
