"""Sharding types for the kernels' hand-written matrix products under JAX's explicit sharding mode.

Under a mesh with ``AxisType.Explicit`` axes (what ``jax.make_mesh`` builds by default since jax
0.7), every array's type carries its sharding (``jax.typeof(x).sharding``), and an operation whose
output sharding is ambiguous (a ``dot_general`` contracting a sharded axis, such as the batch of a
weight gradient) must be told it with ``out_sharding=``. Under ``Auto`` axes, or without a mesh,
the compiler chooses and no ``out_sharding`` is passed (None), so those programs are unchanged.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec


def explicit_sharding(x: jax.Array) -> Optional[NamedSharding]:
    """The sharding in ``x``'s type if its mesh has an Explicit axis, else None (Auto or no mesh).

    For ``out_sharding=`` of an op whose result must be typed like ``x`` (e.g. a weight gradient
    like its weight). Works on tracers and concrete arrays alike.
    """
    sharding = jax.typeof(x).sharding
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or AxisType.Explicit not in tuple(mesh.axis_types):
        return None
    return sharding


def explicit_sharding_from(x: jax.Array, dims: Sequence[Optional[int]]) -> Optional[NamedSharding]:
    """For a result whose axis k carries the sharding of ``x``'s axis ``dims[k]`` (None: unsharded).

    E.g. a reshape (N, Hq, sh, Wq, sw, C) -> (N, Hq*sh, Wq*sw, C) that keeps the batch and channel
    shardings: ``dims=(0, None, None, 5)``. None (no out_sharding) unless ``x``'s mesh is Explicit.
    """
    sharding = explicit_sharding(x)
    if sharding is None:
        return None
    spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
    return NamedSharding(sharding.mesh, PartitionSpec(*(None if d is None else spec[d] for d in dims)))


def gathered(tree: Any) -> Any:
    """Every leaf of ``tree`` replicated if its type is sharded over an Explicit mesh, else as is.

    FSDP's all-gather of the weights before the forward pass under Explicit axes: an op on a
    weight sharded over ``fsdp`` and a batch sharded over ``fsdp`` too has no typed result (one
    axis would shard two dimensions). Its transpose reduce-scatters the gradient back to the
    leaf's own sharding. Under Auto axes or without a mesh nothing changes (XLA places them).
    """
    def gather(x):
        sharding = explicit_sharding(x)
        if sharding is None or all(axis is None for axis in sharding.spec):
            return x
        return jax.sharding.reshard(x, NamedSharding(sharding.mesh, PartitionSpec()))
    return jax.tree.map(gather, tree)
