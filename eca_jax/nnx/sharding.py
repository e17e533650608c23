"""Placing an NNX model's state on a device mesh, the way Flax's NNX sharding guide does it:
compute a ``PartitionSpec`` per leaf of ``nnx.state(node)``, ``jax.device_put`` the state with the
matching ``NamedSharding``s, and write it back with ``nnx.update``. ``nnx.jit`` then keeps every
array where it is and XLA inserts the collectives (BatchNorm statistics are those of the GLOBAL
batch, as in the linen trainer). Data parallel (``model_axis=None``: the state replicated, the batch
sharded) works under ``jax.make_mesh``'s default Explicit axes too, with the Auto mesh's numbers
(tests/test_explicit_mesh.py). Channels sharded over ``model_axis`` are tested under
``AxisType.Auto`` axes only (as :mod:`eca_jax.train.sharding` uses): under Explicit axes a conv
that contracts a sharded channel axis asks for an ``out_sharding``, which nnx.Conv does not pass.

    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)   # Auto: GSPMD
    model = eca_jax.nnx.create_model("eca_resnet8_cifar", rngs=nnx.Rngs(0), num_classes=10)
    eca_jax.nnx.shard_model(model, mesh, model_axis="model")   # conv/dense out-channels over "model"
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    eca_jax.nnx.shard_model(optimizer, mesh, model_axis="model")   # its momentum alike
    x = jax.device_put(x, batch_sharding(mesh, "data"))          # the batch over "data"
"""
from __future__ import annotations

from typing import Any, Optional

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def leaf_spec(shape: tuple, mesh: Mesh, model_axis: Optional[str] = None) -> P:
    """Replicated, except arrays of rank >= 2 whose last axis (a conv's / dense layer's output
    channels: HWIO and (in, out) layouts) divides evenly over ``model_axis``."""
    if model_axis is None or len(shape) < 2 or shape[-1] % mesh.shape[model_axis]:
        return P()
    return P(*([None] * (len(shape) - 1)), model_axis)


def state_shardings(node: Any, mesh: Mesh, model_axis: Optional[str] = None) -> Any:
    """A tree like ``nnx.state(node)`` holding the ``NamedSharding`` of every leaf."""
    return jax.tree.map(lambda a: NamedSharding(mesh, leaf_spec(a.shape, mesh, model_axis)), nnx.state(node))


def shard_model(node: Any, mesh: Mesh, model_axis: Optional[str] = None) -> None:
    """Moves the whole state of an nnx graph node (a model or an ``nnx.Optimizer``) onto ``mesh``
    in place: ``nnx.update(node, jax.device_put(nnx.state(node), state_shardings(...)))``."""
    state = nnx.state(node)
    nnx.update(node, jax.device_put(state, state_shardings(node, mesh, model_axis)))


def batch_sharding(mesh: Mesh, data_axis: str = "data") -> NamedSharding:
    """Shards the leading (batch) axis of an input over ``data_axis``."""
    return NamedSharding(mesh, P(data_axis))
