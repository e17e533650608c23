"""Fine-tuning: start from the weights of another checkpoint (``config.init_from``).

Accepted paths: a training workdir (its latest checkpoint), a ``checkpoints`` directory, one
step directory, or a directory written by ``eca_jax.convert`` (released PyTorch weights).
Only ``params`` and ``batch_stats`` are taken; the optimizer starts fresh.

Every leaf must match the new model by path and shape. The one allowed difference is the
classifier (leaves whose shape depends on ``num_classes``): it is re-initialised when
``init_from_reset_head=True``, otherwise the mismatch is an error naming the fix.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import traverse_util

from eca_jax.train import checkpoint as ckpt_lib
from eca_jax.train.checkpoint import CheckpointMismatchError, CheckpointReadError


def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def load(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """({"params", "batch_stats"} as numpy, signature dict) of the checkpoint at ``path``.

    ``path`` (relative to the current directory, or absolute): a directory written by
    ``eca_jax.convert``, a training workdir, its checkpoints directory or one step directory.
    """
    from eca_jax.convert import store  # noqa: PLC0415 -- lazy: the converter imports this package
    from eca_jax.convert.mapping import ConversionError  # noqa: PLC0415

    path = ckpt_lib.absolute_path(path)
    if store.is_converted_dir(path):
        try:
            return store.load_converted(path)
        except ConversionError as e:
            raise CheckpointReadError(f"init_from={path}: {e}") from None
    step_dir = ckpt_lib.resolve_step_dir(path)
    return ckpt_lib.load_variables(step_dir), ckpt_lib.step_signature(step_dir)


def head_paths(make_shapes: Callable[[int], Mapping[str, Any]], num_classes: int) -> set[str]:
    """Paths of the leaves whose shape depends on num_classes (the classifier).

    make_shapes(n) -> {"params": ..., "batch_stats": ...} shape tree of the model with n classes.
    """
    a, b = _flat(make_shapes(num_classes)), _flat(make_shapes(num_classes + 1))
    return {k for k in a if tuple(a[k].shape) != tuple(b[k].shape)}


def merge(fresh: Mapping[str, Any], loaded: Mapping[str, Any], heads: set[str],
          reset_head: bool, source: str, model_name: str, hint: str = "") -> dict[str, Any]:
    """The fresh variables with every leaf replaced by the loaded one; checks paths/shapes.

    Leaves kept from ``fresh`` (a reset head) are the very same objects."""
    f, l = _flat(fresh), _flat(loaded)
    missing, unexpected = sorted(set(f) - set(l)), sorted(set(l) - set(f))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"init_from={source} does not fit config.model={model_name!r}: "
            f"{len(missing)} variables missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}). Is it a checkpoint of another architecture?{hint}")
    wrong = {k: (tuple(l[k].shape), tuple(f[k].shape)) for k in f
             if tuple(l[k].shape) != tuple(f[k].shape)}
    body = {k: v for k, v in wrong.items() if k not in heads}
    if body:
        items = list(body.items())[:3]
        raise CheckpointMismatchError(
            f"init_from={source} does not fit config.model={model_name!r}: {len(body)} shapes "
            f"differ outside the classifier, e.g. " +
            ", ".join(f"{k}: checkpoint {a} vs model {b}" for k, (a, b) in items) + "." + hint)
    if wrong and not reset_head:
        k, (a, b) = next(iter(wrong.items()))
        raise CheckpointMismatchError(
            f"init_from={source}: the classifier does not match num_classes ({k}: checkpoint "
            f"{a} vs model {b}). Set --config.init_from_reset_head=True to re-initialise it.")
    merged = {k: (f[k] if k in wrong else l[k]) for k in f}
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in merged.items()})


def place_like(value: Any, ref: jax.Array) -> jax.Array:
    """``value`` (host numpy or a jax.Array) as a global array with ``ref``'s dtype/sharding
    (make_array_from_callback works with several processes, each placing its own shards)."""
    if value is ref:
        return value
    value = np.asarray(value, dtype=ref.dtype)
    return jax.make_array_from_callback(ref.shape, ref.sharding, lambda idx: value[idx])


def apply(state, path: str, *, model_name: str, num_classes: int, reset_head: bool,
          make_shapes: Callable[[int], Mapping[str, Any]], log: Callable[[str], None] = print):
    """Returns ``state`` with params/batch_stats from ``path`` (placed with state's shardings)."""
    loaded, signature = load(path)
    found = signature.get("model")
    if found and found != model_name:
        raise CheckpointMismatchError(
            f"init_from={path} holds model {found!r}, but config.model is {model_name!r}.")
    fresh = {"params": state.params, "batch_stats": state.batch_stats}
    loaded = {"params": loaded.get("params", {}), "batch_stats": loaded.get("batch_stats", {})}
    kwargs = signature.get("model_kwargs")
    hint = (f" The checkpoint was made with model_kwargs={kwargs}; set them with "
            f"--config.model_kwargs.<name>=..." if kwargs else "")
    merged = merge(fresh, loaded, head_paths(make_shapes, num_classes), reset_head, path,
                   model_name, hint)
    merged = jax.tree.map(place_like, merged, fresh)
    log(f"Initialised from {path} ({found or 'converted weights'}).")
    return state.replace(params=merged["params"], batch_stats=merged["batch_stats"])
