"""PyTorch <-> Flax checkpoint conversion for every eca_jax model with a PyTorch counterpart.

    from eca_jax import convert
    module, variables = convert.from_torch("eca_resnet50_k3557.pth.tar")    # the authors' release file
    module, variables = convert.from_torch("model.safetensors")             # timm weights, no torch needed
    module, variables = convert.from_torch(torch_model.state_dict())        # in memory
    logits = module.apply(variables, x_nhwc, train=False)
    convert.to_torch("eca_resnet50", variables, "eca_resnet50.pth")         # back, release layout

    convert.save("ckpt/eca_resnet50", variables, {"arch": "eca_resnet50", "num_classes": 1000})
    module, variables, metadata = convert.load("ckpt/eca_resnet50")         # what the CLI writes

Command line: ``python -m eca_jax.convert SRC DST [--arch NAME] [--num-classes N] [--to torch] [--verify]``.

Modules: :mod:`.mapping` (Flax leaf <-> PyTorch key, transposes; pure NumPy), :mod:`.io` (reading
and writing files), :mod:`.arch` (architecture and k from keys and shapes), :mod:`.api`
(from_torch / to_torch), :mod:`.store` (converted directories), :mod:`.torch_forward` and
:mod:`.verify` (``--verify``).
"""
from eca_jax.convert.mapping import ConversionError, flax_from_state_dict, state_dict_from_flax
from eca_jax.convert.io import UnreadableCheckpointError, UnsafePickleError, read_state_dict
from eca_jax.convert.arch import (AmbiguousArchitectureError, Architecture, UnknownArchitectureError,
                                  describe, resolve)
from eca_jax.convert.api import (Converted, convert, flax_from_torch_state_dict, from_torch, to_torch,
                                 to_torch_state_dict)
from eca_jax.convert.store import is_converted_dir, load, load_any, load_converted, read_metadata, save

__all__ = [
    "from_torch", "to_torch", "to_torch_state_dict", "convert", "Converted", "load", "load_any", "save", "load_converted",
    "is_converted_dir", "read_metadata", "state_dict_from_flax", "flax_from_state_dict",
    "flax_from_torch_state_dict", "read_state_dict", "describe", "resolve", "Architecture",
    "ConversionError", "UnreadableCheckpointError", "UnsafePickleError", "AmbiguousArchitectureError",
    "UnknownArchitectureError",
]
