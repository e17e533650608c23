"""Linen variables <-> a native NNX model: ``load_linen_variables`` and ``linen_variables``.

The nnx modules of :mod:`eca_jax.nnx` store every child under its linen scope name, so the path of
an ``nnx.Param`` in ``nnx.state(model)`` is its path in the linen ``params`` tree and the path of
an ``nnx.BatchStat`` its path in ``batch_stats``: no renaming happens, only the collection is
chosen by the variable type. Other nnx state (MobileNetV2's dropout RNG stream) has no linen twin
and is left alone.

    variables = eca_jax.checkpoints.load("ckpt/eca_resnet50").variables     # or linen model.init(...)
    eca_jax.nnx.load_linen_variables(model, variables)                     # in place, checked
    variables = eca_jax.nnx.linen_variables(model)     # {"params": ..., "batch_stats": ...} for linen apply
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from eca_jax.checkpoints.shapes import check_shapes, leaf_shapes

COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


def _variables_by_path(model: nnx.Module) -> dict[tuple[str, ...], nnx.Variable]:
    """{("params" or "batch_stats", *linen path): the nnx Variable} of a model, in graph order."""
    out = {}
    for path, node in nnx.iter_graph(model):
        for collection, kind in COLLECTIONS.items():
            if isinstance(node, kind):
                out[(collection,) + tuple(str(p) for p in path)] = node
    return out


def linen_variables(model: nnx.Module) -> dict[str, Any]:
    """The model's variables as a linen tree ``{"params": {...}, "batch_stats": {...}}`` (the arrays
    themselves, not copies; ``batch_stats`` left out when the model has none)."""
    flat = {path: var.get_value() for path, var in _variables_by_path(model).items()}
    tree = traverse_util.unflatten_dict(flat)
    return {k: tree[k] for k in COLLECTIONS if k in tree}


def load_linen_variables(model: nnx.Module, variables: Mapping[str, Any], *,
                         source: str = "The linen variables") -> None:
    """Writes a linen variables tree (``params`` and ``batch_stats``; other collections ignored)
    into ``model`` in place.

    Every path must exist with the model's shape: otherwise a ShapeMismatchError (a ValueError)
    names how many paths are mis-shaped, missing and unexpected, and the first of each
    (``params/layer1.0/conv1/kernel``), via :func:`eca_jax.checkpoints.shapes.check_shapes`.
    Values are cast to the model's variable dtype and placed with the model's current sharding,
    so a model sharded with :func:`eca_jax.nnx.shard_model` stays sharded.
    """
    targets = _variables_by_path(model)
    expected = {"/".join(path): tuple(var.get_value().shape) for path, var in targets.items()}
    check_shapes(leaf_shapes(variables), expected, source=source, target=type(model).__name__,
                 found_in="the variables")
    flat = traverse_util.flatten_dict({k: variables.get(k) or {} for k in COLLECTIONS})
    for path, var in targets.items():
        old = var.get_value()
        new = jnp.asarray(flat[path], dtype=old.dtype)
        if isinstance(old, jax.Array) and not isinstance(old, jax.core.Tracer):
            new = jax.device_put(new, old.sharding)
        var.set_value(new)
