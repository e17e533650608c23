"""PyTorch <-> Flax checkpoint conversion for every eca_jax model with a PyTorch counterpart.

    from eca_jax import convert
    module, variables = convert.from_torch("eca_resnet50_k3557.pth.tar")    # the authors' release file
    module, variables = convert.from_torch("model.safetensors")             # timm weights, no torch needed
    module, variables = convert.from_torch(torch_model.state_dict())        # in memory
    logits = module.apply(variables, x_nhwc, train=False)
    convert.to_torch("eca_resnet50", variables, "eca_resnet50.pth")         # back, release layout

    convert.save("ckpt/eca_resnet50", variables, {"arch": "eca_resnet50", "num_classes": 1000})
    loaded = eca_jax.checkpoints.load("ckpt/eca_resnet50")                  # what the CLI writes

Command line: ``python -m eca_jax.convert SRC DST [--arch NAME] [--num-classes N] [--to torch] [--verify]``.

The converter maps names and writes: reading PyTorch files, key names and order, and architecture
inference live in the checkpoint layer (:mod:`eca_jax.checkpoints`), re-exported here; this
package adds the export (:mod:`.api`), the command line (:mod:`.__main__`) and ``--verify``
(:mod:`.torch_forward`, :mod:`.verify`).
"""
from eca_jax.checkpoints.converted import is_converted_dir, read_metadata, save
from eca_jax.checkpoints.errors import (AmbiguousArchitectureError, ConversionError, UnknownArchitectureError,
                                        UnreadableCheckpointError, UnsafePickleError)
from eca_jax.checkpoints.torch_arch import describe
from eca_jax.checkpoints.torch_files import read_state_dict
from eca_jax.checkpoints.torch_import import Converted, convert, flax_from_torch_state_dict, from_torch
from eca_jax.checkpoints.torch_keys import flax_from_state_dict, state_dict_from_flax
from eca_jax.checkpoints.torch_resolve import Architecture, resolve
from eca_jax.convert.api import metadata_for, to_torch, to_torch_state_dict

__all__ = [
    "from_torch", "to_torch", "to_torch_state_dict", "convert", "Converted", "save", "metadata_for",
    "is_converted_dir", "read_metadata", "state_dict_from_flax", "flax_from_state_dict",
    "flax_from_torch_state_dict", "read_state_dict", "describe", "resolve", "Architecture",
    "ConversionError", "UnreadableCheckpointError", "UnsafePickleError", "AmbiguousArchitectureError",
    "UnknownArchitectureError",
]
