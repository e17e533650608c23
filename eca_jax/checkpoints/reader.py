"""Where a checkpoint is read: :func:`load` takes any checkpoint eca_jax understands and returns
the model, its variables and its signature, checked against each other.

=====================================  =====================================================
path                                   read by
=====================================  =====================================================
a directory written by eca_jax.convert  :mod:`.converted` (orbax variables + JSON metadata)
a training workdir, its ``checkpoints``  :mod:`.training` (params and batch_stats of the
directory, or one step directory        latest / best / given step; no optimizer state)
a PyTorch file: the release's           :mod:`.torch_import` (architecture and k inferred from
``.pth.tar``, torchvision's ``.pth``,   the keys and shapes, or ``arch=``)
timm's ``.safetensors``
=====================================  =====================================================

Every kind is checked the same way (:func:`eca_jax.checkpoints.shapes.check_shapes`): the stored
variables must have exactly the paths and shapes of the model their signature rebuilds.
Paths may be relative to the current directory.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import flax.linen as nn
import numpy as np

from eca_jax._paths import absolute_path
from eca_jax.checkpoints import converted, training
from eca_jax.checkpoints.errors import CheckpointReadError
from eca_jax.checkpoints.shapes import check_shapes, leaf_shapes
from eca_jax.checkpoints.signature import ModelSignature, abstract_variables
from eca_jax.checkpoints.torch_import import convert

KINDS = ("converted", "training", "torch")


@dataclasses.dataclass
class Loaded:
    """What :func:`load` returns.

    module: the Flax model (``module.apply(variables, x_nhwc, train=False)``); variables:
    {"params", "batch_stats"} as host NumPy arrays; signature: :class:`ModelSignature`;
    kind: "converted" | "training" | "torch"; where: the absolute path read (for a training
    checkpoint, the step directory); step: the training step (None otherwise); metadata: the
    converted directory's JSON, the step's custom metadata, or the PyTorch file's source info.
    """
    module: nn.Module
    variables: dict
    signature: ModelSignature
    kind: str
    where: str
    step: Optional[int] = None
    metadata: dict = dataclasses.field(default_factory=dict)


def load(path: str | os.PathLike, arch: Optional[str] = None, *, best: bool = False,
         step: Optional[int] = None, ema: bool = False) -> Loaded:
    """Reads the checkpoint at ``path`` (see the module docstring for what it may be).

    arch: for a PyTorch file, force the architecture (default: inferred from the keys). best / step:
    for a training workdir, the step with the best eval top-1 / this step (default: the latest).
    ema: a training checkpoint's exponential moving average of the weights (``config.ema_decay``).
    Raises FileNotFoundError (no such path or step), CheckpointReadError (corrupt metadata, best
    without eval metrics, steps asked of a file without steps), ConversionError (an unreadable or
    unknown PyTorch file), ShapeMismatchError (stored variables that do not fit their model).
    """
    path = absolute_path(path)
    if (best or step is not None or ema) and (converted.is_converted_dir(path) or os.path.isfile(path)):
        raise CheckpointReadError(f"{path} is a converted checkpoint or a PyTorch file: it has no steps "
                                  "and no EMA (drop --best/--step/--ema).")
    if converted.is_converted_dir(path):
        return _load_converted(path)
    if os.path.isdir(path):
        return _load_training(path, best=best, step=step, ema=ema)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint path {path} does not exist.")
    return _load_torch(path, arch)


def _checked(signature: ModelSignature, variables: dict, where: str) -> tuple[nn.Module, dict]:
    """(the rebuilt module, variables as NumPy) after the one shape check."""
    module = signature.build()
    check_shapes(leaf_shapes(variables), leaf_shapes(abstract_variables(module)), source=f"The checkpoint {where}",
                 target=signature.describe(), found_in="the checkpoint")
    return module, jax.tree.map(np.asarray, variables)


def _load_converted(path: str) -> Loaded:
    metadata = converted.read_metadata(path)
    signature = ModelSignature.from_converted(metadata)
    module, variables = _checked(signature, converted.read_variables(path), path)
    return Loaded(module, variables, signature, "converted", path, metadata=metadata)


def _load_training(path: str, *, best: bool, step: Optional[int], ema: bool = False) -> Loaded:
    step_dir = training.resolve_step_dir(path, best=best, step=step)
    stored = training.step_signature(step_dir)
    if not stored.get("model"):
        raise CheckpointReadError(f"{step_dir} has no model metadata; was it written by eca_jax.train?")
    signature = ModelSignature.from_training(stored)
    module, variables = _checked(signature, training.load_variables(step_dir, ema=ema), str(step_dir))
    return Loaded(module, variables, signature, "training", str(step_dir), int(step_dir.name), stored)


def _load_torch(path: str, arch: Optional[str]) -> Loaded:
    result = convert(path, arch)
    signature = ModelSignature.from_converted({"arch": result.arch.name, "num_classes": result.arch.num_classes,
                                               "model_kwargs": result.arch.kwargs})
    variables = jax.tree.map(np.asarray, result.variables)
    return Loaded(result.module, variables, signature, "torch", path, metadata=dict(result.source))


def place_like(value: Any, ref: jax.Array) -> jax.Array:
    """``value`` (host NumPy or a jax.Array) as a global array with ``ref``'s dtype and sharding
    (make_array_from_callback works with several processes, each placing its own shards)."""
    if value is ref:
        return value
    value = np.asarray(value, dtype=ref.dtype)
    return jax.make_array_from_callback(ref.shape, ref.sharding, lambda idx: value[idx])
