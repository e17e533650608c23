"""Reading training checkpoints: a workdir, its ``checkpoints`` directory, or one step.

Layout written by :class:`eca_jax.train.checkpoint.Checkpointer` (orbax CheckpointManager):
``<workdir>/checkpoints/<step>/{state, data_iter, metrics}`` plus orbax's root ``metadata``; each
step's ``_CHECKPOINT_METADATA`` carries the model signature and the training config as custom
metadata, so one step directory is self-describing.

Paths may be relative to the current directory (orbax itself only takes absolute ones); URLs
such as ``gs://`` stay as they are.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from eca_jax._paths import absolute_path
from eca_jax.checkpoints.errors import CheckpointReadError

CHECKPOINT_DIRNAME = "checkpoints"

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


def load_variables(step_dir: str | os.PathLike, *, ema: bool = False) -> dict[str, Any]:
    """{"params", "batch_stats"} of a step as host numpy arrays (the optimizer state is skipped).

    ``ema``: the exponential moving average saved beside them (``config.ema_decay``) instead;
    CheckpointReadError when the run kept none."""
    step_dir = epath.Path(absolute_path(step_dir))
    tree = _state_tree_metadata(step_dir)
    if ema:
        if not tree.get("ema"):
            raise CheckpointReadError(f"{step_dir} has no EMA weights: the run was trained without "
                                      "config.ema_decay (drop --ema to use its weights).")
        tree = tree["ema"]
    target = {k: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree[k])
              for k in ("params", "batch_stats") if k in tree}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = ocp.PyTreeCheckpointer().restore(
        step_dir / "state", args=ocp.args.PyTreeRestore(
            item={"ema": target} if ema else target,
            restore_args={"ema": restore_args} if ema else restore_args, partial_restore=True))
    restored = dict(restored["ema"] if ema else restored)
    restored.setdefault("batch_stats", {})
    return restored
