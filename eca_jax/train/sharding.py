"""Device mesh and shardings: data parallelism plus FSDP over a ("data", "fsdp") mesh.

- The mesh has two axes. ``data`` replicates parameters; ``fsdp`` shards each large parameter
  (and its optimizer state) along its largest axis that the fsdp size divides. Parameters
  with fewer than ``fsdp_min_size`` elements (biases, BatchNorm, ECA kernels) stay replicated.
- The batch is sharded over both axes together, so every device holds batch / num_devices
  examples. Under ``jax.jit`` XLA inserts the all-gathers (FSDP) and gradient reductions.
- One rule for every array, chosen by shape alone: optimizer-state leaves that have a
  parameter's shape get that parameter's sharding.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from eca_jax.kernels.sharding import gathered

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # the batch dimension is split over both mesh axes


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
    """Resolves one -1 entry to the remaining devices; checks the product."""
    if data == -1 and fsdp == -1:
        raise ValueError("At most one mesh axis may be -1.")
    if data == -1 or fsdp == -1:
        known = fsdp if data == -1 else data
        if num_devices % known:
            raise ValueError(f"{num_devices} devices cannot be split into mesh axis of size {known}.")
        rest = num_devices // known
        return (rest, fsdp) if data == -1 else (data, rest)
    if data * fsdp > num_devices:
        raise ValueError(f"Mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices; "
                         f"only {num_devices} are available.")
    return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None,
              axis_type: AxisType = AxisType.Auto) -> Mesh:
    """A ("data", "fsdp") mesh over ``devices`` (default: all devices of all processes).

    With explicit sizes whose product is smaller than the device count, the first
    data*fsdp devices are used (single-process only; handy for tests and debugging).

    ``axis_type``: Auto (the trainer's default: XLA's partitioner places every intermediate, the
    FSDP all-gathers included, and nothing in the step needs a sharding type) or Explicit (JAX's
    sharding-in-types mode, ``jax.make_mesh``'s own default): the train and eval steps run
    under both with the same numbers (tests/test_explicit_mesh.py), the FSDP all-gather being
    :func:`gather_params` under Explicit axes.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, len(devices))
    n = math.prod(shape)
    if n < len(devices) and jax.process_count() > 1:
        raise ValueError(f"Multi-process runs must use all {len(devices)} devices; "
                         f"mesh {shape} uses {n}.")
    return jax.make_mesh(shape, AXES, axis_types=(axis_type,) * 2, devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Shards the leading (batch) dimension over all mesh devices."""
    return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> P:
    """PartitionSpec for one array: its largest axis divisible by fsdp_size, if it is large."""
    if fsdp_size <= 1 or math.prod(shape) < min_size:
        return P()
    for axis in np.argsort(shape, kind="stable")[::-1]:
        if shape[axis] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(abstract_tree: Any, mesh: Mesh, min_size: int) -> Any:
    """NamedShardings for every leaf of a tree of arrays / ShapeDtypeStructs."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp, min_size)),
                        abstract_tree)


def gather_params(params: Any) -> Any:
    """The parameters whole for the forward pass: FSDP's all-gather under Explicit mesh axes, as is
    under Auto axes (XLA places the all-gathers). See :func:`eca_jax.kernels.sharding.gathered`."""
    return gathered(params)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Raises a clear error unless the global batch splits evenly over devices and processes."""
    if batch_size % mesh.size:
        raise ValueError(
            f"{what}={batch_size} is not divisible by the {mesh.size} devices of the mesh "
            f"{dict(mesh.shape)}; use a multiple of {mesh.size}.")
    if batch_size % jax.process_count():
        raise ValueError(f"{what}={batch_size} is not divisible by the "
                         f"{jax.process_count()} processes.")
