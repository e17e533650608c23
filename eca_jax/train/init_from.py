"""Fine-tuning: start from the weights of another checkpoint (``config.init_from``).

Accepted paths: anything :func:`eca_jax.checkpoints.load` reads: a training workdir (its latest
checkpoint), a ``checkpoints`` directory, one step directory, a directory written by
``eca_jax.convert``, or a PyTorch file (the release's ``.pth.tar``, timm's ``.safetensors``); or
``pretrained://NAME[.TAG]`` (published weights, downloaded, checked and converted once by
:mod:`eca_jax.pretrained`).
Only ``params`` and ``batch_stats`` are taken; the optimizer starts fresh.

Every leaf must match the new model by path and shape (one check,
:func:`eca_jax.checkpoints.check_shapes`). The one allowed difference is the classifier (leaves
whose shape depends on ``num_classes``): it is re-initialised when ``init_from_reset_head=True``,
otherwise the mismatch is an error naming the fix.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
from flax import traverse_util

from eca_jax import pretrained
from eca_jax.checkpoints import load, place_like
from eca_jax.checkpoints.errors import CheckpointMismatchError
from eca_jax.checkpoints.shapes import check_shapes, leaf_shapes


def head_paths(make_shapes: Callable[[int], Mapping[str, Any]], num_classes: int) -> set[str]:
    """Paths ("params/fc/kernel", ...) of the leaves whose shape depends on num_classes (the classifier).

    make_shapes(n) -> {"params": ..., "batch_stats": ...} shape tree of the model with n classes.
    """
    a, b = leaf_shapes(make_shapes(num_classes)), leaf_shapes(make_shapes(num_classes + 1))
    return {k for k in a if a[k] != b[k]}


def merge(fresh: Mapping[str, Any], loaded: Mapping[str, Any], heads: set[str],
          reset_head: bool, source: str, model_name: str, hint: str = "") -> dict[str, Any]:
    """The fresh variables with every leaf replaced by the loaded one; checks paths and shapes.

    Leaves kept from ``fresh`` (a reset head) are the very same objects."""
    expected, found = leaf_shapes(fresh), leaf_shapes(loaded)
    where = dict(source=f"init_from={source}", target=f"config.model={model_name!r}", found_in="the checkpoint")
    check_shapes(found, expected, ignore=heads, **where,
                 hint=f" The shapes differ outside the classifier: is it a checkpoint of another architecture?{hint}")
    if not reset_head:
        check_shapes(found, expected, **where, hint=" Only the classifier differs (num_classes): set "
                     "--config.init_from_reset_head=True to re-initialise it.")
    flat_fresh = traverse_util.flatten_dict({k: fresh.get(k) or {} for k in ("params", "batch_stats")}, sep="/")
    flat_loaded = traverse_util.flatten_dict({k: loaded.get(k) or {} for k in ("params", "batch_stats")}, sep="/")
    merged = {k: (v if found.get(k) != expected[k] else flat_loaded[k]) for k, v in flat_fresh.items()}
    return traverse_util.unflatten_dict(merged, sep="/")


def apply(state, path: str, *, model_name: str, num_classes: int, reset_head: bool,
          make_shapes: Callable[[int], Mapping[str, Any]], log: Callable[[str], None] = print):
    """Returns ``state`` with params/batch_stats from ``path`` (placed with state's shardings)."""
    loaded = pretrained.load_spec(path) if pretrained.is_spec(path) else load(path)
    found = loaded.signature.model
    if found != model_name:
        raise CheckpointMismatchError(
            f"init_from={path} holds model {found!r}, but config.model is {model_name!r}.")
    fresh = {"params": state.params, "batch_stats": state.batch_stats}
    kwargs = dict(loaded.signature.model_kwargs)
    hint = (f" The checkpoint was made with model_kwargs={kwargs}; set them with "
            f"--config.model_kwargs.<name>=..." if kwargs else "")
    merged = merge(fresh, loaded.variables, head_paths(make_shapes, num_classes), reset_head, path,
                   model_name, hint)
    merged = jax.tree.map(place_like, merged, fresh)
    log(f"Initialised from {path} ({found}, {loaded.kind} checkpoint).")
    return state.replace(params=merged["params"], batch_stats=merged["batch_stats"])
