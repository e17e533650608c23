"""The checkpoint layer: every weight eca_jax reads comes through here.

    from eca_jax import checkpoints
    loaded = checkpoints.load("ckpt/eca_resnet50")            # converted dir, workdir, step or .pth.tar
    logits = loaded.module.apply(loaded.variables, x_nhwc, train=False)
    loaded.signature                                           # model, num_classes, model_kwargs, input settings

Between ``eca_jax.models`` and its users: imports run one way,
``nn <- models <- checkpoints <- train / convert / evaluate / predict``.

Modules, one job each:

- :mod:`.reader`: :func:`load`, the single reader (which kind of path goes where).
- :mod:`.signature`: what identifies a checkpoint's model; rebuilds it.
- :mod:`.shapes`: the one shape check and its error format.
- :mod:`.converted`: directories written by ``eca_jax.convert`` (orbax + JSON), atomically.
- :mod:`.training`: reading the trainer's orbax checkpoints (``eca_jax.train.checkpoint`` writes them).
- :mod:`.torch_files`, :mod:`.torch_keys`, :mod:`.torch_arch`, :mod:`.torch_resolve`,
  :mod:`.torch_import`: PyTorch files, key names and order, architecture from the keys, import.
- :mod:`.errors`: the exceptions (all ValueErrors naming what is wrong).
"""
from eca_jax.checkpoints.errors import (AmbiguousArchitectureError, CheckpointError, CheckpointMismatchError,
                                        CheckpointReadError, ConversionError, ShapeMismatchError,
                                        UnknownArchitectureError, UnreadableCheckpointError, UnsafePickleError)
from eca_jax.checkpoints.reader import KINDS, Loaded, load, place_like
from eca_jax.checkpoints.shapes import check_shapes, leaf_shapes
from eca_jax.checkpoints.signature import ModelSignature, abstract_variables

__all__ = [
    "load", "Loaded", "KINDS", "place_like", "ModelSignature", "abstract_variables", "check_shapes", "leaf_shapes",
    "CheckpointError", "ConversionError", "CheckpointMismatchError", "CheckpointReadError", "ShapeMismatchError",
    "UnreadableCheckpointError", "UnsafePickleError", "AmbiguousArchitectureError", "UnknownArchitectureError",
]
