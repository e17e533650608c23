"""Checkpoints with orbax: async saves, keep-last-K plus best, exact resume, safe to kill.

Layout: ``<workdir>/checkpoints/<step>/{state, data_iter, metrics}`` plus orbax's root
``metadata`` (the model signature). Each step also carries the signature and the config as
custom metadata, so a single step directory is self-describing (``eca_jax.evaluate`` and
``init_from`` only need its path).

Safety: orbax writes every step into a temporary directory and renames it once all items and
all processes have committed; a run killed mid-save (even SIGKILL) leaves only a temporary
directory, which the next run ignores and deletes (``cleanup_tmp_directories``). A failed save
(e.g. out of disk) raises :class:`CheckpointSaveError` and leaves earlier steps untouched.

Restoring takes the abstract train state with the *current* mesh's shardings, so a checkpoint
written on N devices restores onto M devices or another mesh shape.

Paths: orbax only accepts absolute paths, so every reader here resolves the path it is given
against the current directory first (:func:`absolute_path`; URLs such as ``gs://`` stay as they
are). One trainer per workdir: :func:`workdir_lock`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from typing import Any, Iterator, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from eca_jax._lock import LockHeldError, file_lock
from eca_jax._paths import absolute_path, is_remote  # noqa: F401  (absolute_path: public here)

CHECKPOINT_DIRNAME = "checkpoints"
SIGNATURE_KEYS = ("model", "num_classes", "model_kwargs")
_policies = ocp.checkpoint_managers


class _DropMetricsWarning(logging.Filter):
    """Intermediate steps are saved without eval metrics on purpose (the best-of policy ignores
    them); orbax warns about each such save."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in str(record.msg)


logging.getLogger("absl").addFilter(_DropMetricsWarning())


class CheckpointSaveError(RuntimeError):
    """Saving a checkpoint failed; the previously committed checkpoints are still usable."""


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to another model (name, number of classes or architecture kwargs)."""


class CheckpointReadError(ValueError):
    """A checkpoint cannot be used as asked: corrupt metadata, no eval metrics for ``best``."""


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


def _manager_options(keep: int, keep_best: bool, async_save: bool):
    policy = _policies.LatestN(n=keep)
    if keep_best:
        policy = _policies.AnyPreservationPolicy([policy, _policies.BestN(
            get_metric_fn=_top1, reverse=False, n=1, keep_checkpoints_without_metrics=False)])
    return ocp.CheckpointManagerOptions(
        best_fn=_top1 if keep_best else None, best_mode="max", preservation_policy=policy,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)


def describe(signature: Mapping[str, Any]) -> str:
    kwargs = signature.get("model_kwargs") or {}
    extra = f", model_kwargs={kwargs}" if kwargs else ""
    return f"model {signature.get('model')!r} with num_classes={signature.get('num_classes')}{extra}"


def normalize(signature: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON round trip (tuples -> lists), so stored and fresh signatures compare equal."""
    return json.loads(json.dumps(dict(signature), default=str))


def check_signature(found: Mapping[str, Any], expected: Mapping[str, Any], where: str,
                    hint: str = "") -> None:
    """Raises CheckpointMismatchError if ``found`` differs from ``expected`` in SIGNATURE_KEYS."""
    found, expected = normalize(found), normalize(expected)
    diff = [k for k in SIGNATURE_KEYS if (found.get(k) or None) != (expected.get(k) or None)]
    if diff:
        raise CheckpointMismatchError(
            f"{where} holds checkpoints of {describe(found)}, but the config asks for "
            f"{describe(expected)} (differs in {', '.join(diff)}).{hint}")


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


# The helpers below read orbax's on-disk layout with plain file reads (no CheckpointManager):
# they run in every process at start-up, where a manager's collective syncs could pair up
# differently across processes racing to create the directory.
_COMMIT_MARKER = "commit_success.txt"
_STEP_METADATA = "_CHECKPOINT_METADATA"


def committed_steps(root: str | os.PathLike) -> list[int]:
    """Sorted steps under a checkpoints directory whose save has committed (tmp dirs skipped)."""
    root = epath.Path(root)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir()
                  if p.name.isdigit() and (p / _COMMIT_MARKER).exists())


def _read_json(path: epath.Path) -> dict[str, Any]:
    """The JSON object in ``path``, {} if the file does not exist; CheckpointReadError if corrupt."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointReadError(f"Corrupt checkpoint metadata {path}: not valid JSON ({e}).") from None
    if not isinstance(value, dict):
        raise CheckpointReadError(
            f"Corrupt checkpoint metadata {path}: expected a JSON object, found {type(value).__name__}.")
    return value


def read_root_signature(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The signature stored in a checkpoints directory (None if it has no committed step)."""
    directory = epath.Path(absolute_path(directory))
    steps = committed_steps(directory)
    if not steps:
        return None
    found = dict(_read_json(directory / "metadata" / "_ROOT_METADATA").get("custom_metadata") or {})
    return found if found.get("model") else step_signature(directory / str(steps[-1]))


def best_committed_step(root: str | os.PathLike) -> int | None:
    """The committed step with the highest eval top-1 (saved metrics); None if none has metrics."""
    root = epath.Path(absolute_path(root))
    scored = [(float(m["top1"]), s) for s in committed_steps(root)
              if "top1" in (m := _read_json(root / str(s) / "metrics" / "metrics"))]
    return max(scored)[1] if scored else None


def resolve_step_dir(path: str | os.PathLike, *, best: bool = False,
                     step: int | None = None) -> epath.Path:
    """The step directory for a workdir, a checkpoints directory or a step directory.

    For a workdir / checkpoints directory: the given ``step``, else the best (``best=True``,
    by eval top-1; CheckpointReadError if no step has eval metrics) or the latest committed step.
    Relative paths are taken from the current directory; the result is absolute.
    """
    path = epath.Path(absolute_path(path))
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint path {path} does not exist.")
    if (path / "state").exists() and (path / _STEP_METADATA).exists():
        return path
    root = path / CHECKPOINT_DIRNAME if (path / CHECKPOINT_DIRNAME).exists() else path
    steps = committed_steps(root)
    if not steps:
        raise FileNotFoundError(f"No committed checkpoint under {root}.")
    if step is None and best:
        step = best_committed_step(root)
        if step is None:
            raise CheckpointReadError(
                f"No eval metrics recorded in {root}, so there is no best checkpoint; pass --step "
                f"(one of {steps}) or drop --best to use the latest.")
    elif step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"No checkpoint for step {step} under {root}; have {steps}.")
    return root / str(step)


def step_signature(step_dir: epath.Path) -> dict[str, Any]:
    """The custom metadata (signature + config) of one step directory."""
    path = epath.Path(absolute_path(step_dir)) / _STEP_METADATA
    return dict(_read_json(path).get("custom_metadata") or {})


def _state_tree_metadata(step_dir: str | os.PathLike) -> dict[str, Any]:
    """The saved train state's tree of array metadata (shape, dtype), without reading arrays.

    Asks the item's handler: a Checkpointer would also look for a step-level
    ``_CHECKPOINT_METADATA`` inside the item directory (it is one level up) and warn."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        return handler.metadata(epath.Path(absolute_path(step_dir)) / "state").tree
    finally:
        handler.close()


def variables_shapes(step_dir: str | os.PathLike) -> dict[str, Any]:
    """{"params": ..., "batch_stats": ...} as trees of shapes, read from the metadata only."""
    tree = _state_tree_metadata(step_dir)
    return {k: jax.tree.map(lambda a: tuple(a.shape), tree.get(k) or {})
            for k in ("params", "batch_stats")}


def load_variables(step_dir: str | os.PathLike) -> dict[str, Any]:
    """{"params", "batch_stats"} of a step as host numpy arrays (the optimizer state is skipped)."""
    step_dir = epath.Path(absolute_path(step_dir))
    tree = _state_tree_metadata(step_dir)
    target = {k: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree[k])
              for k in ("params", "batch_stats") if k in tree}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = ocp.PyTreeCheckpointer().restore(
        step_dir / "state",
        args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True))
    restored.setdefault("batch_stats", {})
    return restored
