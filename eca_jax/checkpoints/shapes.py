"""The one shape check of eca_jax: which keys a checkpoint lacks, has in excess, or has mis-shaped.

Every reader compares with :func:`check_shapes`, so every mismatch reads the same::

    The state dict does not match eca_resnet50 (arch forced): 1 mis-shaped, first 'layer1.0.conv1.weight':
    shape (64, 64, 3, 3) in the state dict but (64, 64, 1, 1) in the model; 3 missing, first ... ;
    2 unexpected, first ... .

Keys are PyTorch state-dict keys (``layer1.0.conv1.weight``) or Flax variable paths joined with
"/" (``params/layer1.0/conv1/kernel``, see :func:`leaf_shapes`).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
from flax import traverse_util

from eca_jax.checkpoints.errors import ShapeMismatchError

COLLECTIONS = ("params", "batch_stats")


def leaf_shapes(variables: Mapping[str, Any]) -> dict[str, tuple]:
    """{"params/<path>" or "batch_stats/<path>": shape} of a variables tree (arrays or
    ShapeDtypeStructs); collections other than params and batch_stats are ignored."""
    tree = {k: variables.get(k) or {} for k in COLLECTIONS}
    flat = traverse_util.flatten_dict(tree)
    return {"/".join(k): tuple(np.shape(v)) for k, v in flat.items()}


def differences(found: Mapping[str, tuple], expected: Mapping[str, tuple],
                ignore: Iterable[str] = ()) -> tuple[list[str], list[str], list[str]]:
    """(mis-shaped, missing, unexpected) keys of ``found`` against ``expected``, in
    ``expected``'s (then ``found``'s) order; keys in ``ignore`` are left out."""
    skip = set(ignore)
    wrong = [k for k in expected if k in found and k not in skip and tuple(found[k]) != tuple(expected[k])]
    missing = [k for k in expected if k not in found and k not in skip]
    unexpected = [k for k in found if k not in expected and k not in skip]
    return wrong, missing, unexpected


def check_shapes(found: Mapping[str, tuple], expected: Mapping[str, tuple], *, source: str,
                 target: str, ignore: Iterable[str] = (), hint: str = "",
                 found_in: str = "") -> None:
    """Raises ShapeMismatchError unless ``found`` has exactly ``expected``'s keys and shapes.

    found / expected: {key: shape}. source / target: what each describes, e.g. "The state dict"
    and "eca_resnet50 (arch forced)". ignore: keys left out of the comparison. hint: appended to
    the message (e.g. the fix). found_in: how the message names where ``found`` is ("the state
    dict" by default, from ``source`` lower-cased).
    """
    wrong, missing, unexpected = differences(found, expected, ignore)
    if not (wrong or missing or unexpected):
        return
    where = found_in or source[:1].lower() + source[1:]
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} mis-shaped, first {k!r}: shape {tuple(found[k])} in {where} but "
                     f"{tuple(expected[k])} in the model")
    if missing:
        parts.append(f"{len(missing)} missing, first {missing[0]!r} (model shape {tuple(expected[missing[0]])})")
    if unexpected:
        k = unexpected[0]
        parts.append(f"{len(unexpected)} unexpected, first {k!r} (shape {tuple(found[k])})")
    raise ShapeMismatchError(f"{source} does not match {target}: " + "; ".join(parts) + "." + hint)
