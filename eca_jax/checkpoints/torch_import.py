"""PyTorch weights -> Flax: a file or in-memory state dict read, its architecture resolved, its
keys checked and renamed (:func:`convert`, :func:`from_torch`).

read (:mod:`.torch_files`: unwrap, ``module.``, num_batches_tracked) -> resolve the architecture
(:mod:`.torch_arch`, :mod:`.torch_resolve`) -> strict key/shape check -> rename + transpose
(:mod:`.torch_keys`).
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
from flax import traverse_util

from eca_jax.checkpoints import torch_files
from eca_jax.checkpoints.errors import ConversionError
from eca_jax.checkpoints.signature import abstract_variables
from eca_jax.checkpoints.torch_keys import flax_from_state_dict, torch_shapes
from eca_jax.checkpoints.torch_resolve import Architecture, resolve


@dataclasses.dataclass
class Converted:
    """The result of :func:`convert`.

    module / variables: ready for ``module.apply(variables, x_nhwc, train=False)``;
    arch: the resolved :class:`~eca_jax.checkpoints.torch_resolve.Architecture` (name, kwargs, k per layer);
    source: what was read (path, sha256, the wrapper's unused ``arch`` field);
    notes: what the user should know (e.g. a re-initialised head);
    state_dict: the cleaned PyTorch state dict that was read (NumPy; for --verify).
    """
    module: nn.Module
    variables: dict
    arch: Architecture
    source: dict
    notes: list
    state_dict: dict


def _new_head(architecture: Architecture, seed: int) -> dict:
    """Fresh classifier leaves {(collection, *path): array} from the model's own initialisers."""
    module = architecture.module
    in_chans = getattr(module, "in_chans", 3)
    fresh = module.lazy_init(jax.random.key(seed), jax.ShapeDtypeStruct((1, 64, 64, in_chans), jnp.float32),
                             train=False)
    flat = traverse_util.flatten_dict({"params": fresh["params"]})
    # The classifier's Flax scope name is its PyTorch module path (fc / classifier.1).
    out = {k: np.asarray(v) for k, v in flat.items() if k[1] == architecture.head}
    if not out:
        raise ConversionError(f"internal: no classifier {architecture.head} in {type(module).__name__}")
    return out


def convert(src: torch_files.Source, arch: Optional[str] = None, *, num_classes: Optional[int] = None,
            head_seed: int = 0) -> Converted:
    """Reads ``src`` (path or in-memory state dict) and returns a :class:`Converted`.

    See :func:`from_torch` for the arguments. ``head_seed`` seeds a re-initialised classifier.
    """
    state_dict, source = torch_files.read_state_dict(src)
    original = state_dict
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    architecture = resolve(shapes, arch, num_classes)
    notes = []
    if source.get("arch") and str(source["arch"]) != architecture.name:
        notes.append(f"the file says arch={source['arch']!r}; its weights are {architecture.name} "
                     "(the arch field is ignored)")
    head = architecture.head
    keep_head = architecture.file_classes == architecture.num_classes
    allow = []
    if not keep_head:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(head + ".")}
        allow = [k for k in torch_shapes(architecture.abstract) if k.startswith(head + ".")]
    variables = flax_from_state_dict(state_dict, architecture.abstract, what=architecture.name,
                                     allow_missing=allow)
    if not keep_head:
        flat = traverse_util.flatten_dict(variables)
        flat.update(_new_head(architecture, head_seed))
        variables = traverse_util.unflatten_dict(flat)
        was = f"{architecture.file_classes} classes" if architecture.file_classes else "no classifier"
        message = (f"new classifier {head} with {architecture.num_classes} classes, randomly initialised "
                   f"(the file had {was}); the backbone is converted (fine-tuning)")
        notes.append(message)
        warnings.warn(message, stacklevel=3)
    variables = {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}
    variables = jax.tree.map(jnp.asarray, variables)
    return Converted(architecture.module, variables, architecture, source, notes, original)


def from_torch(src: Union[str, os.PathLike, Mapping[str, Any]], arch: Optional[str] = None, *,
               num_classes: Optional[int] = None) -> tuple[nn.Module, dict]:
    """PyTorch weights -> (flax Module, ``{"params", "batch_stats"}``).

    Args:
      src: a file (``.pth.tar``, ``.pth``, ``.pt``, ``.bin`` read with ``torch.load(weights_only=True)``;
        ``.safetensors`` read without torch) or an in-memory state dict of torch tensors / NumPy arrays.
        The release's wrapper dict and DataParallel's ``module.`` prefixes are handled.
      arch: None to infer the architecture from the keys and shapes; a registered name to force it
        (then every key must fit it). k of every ECA layer always comes from the weights.
      num_classes: None keeps the file's classifier; another value keeps the backbone and
        initialises a new classifier (a warning says so).
    Returns the module and its variables (float32 jax arrays); ``module.apply(variables, x, train=False)``
    takes NHWC images and gives the logits of the PyTorch model on the NCHW transpose.
    Raises ConversionError (a ValueError) naming the file, key, shape or argument at fault.
    """
    result = convert(src, arch, num_classes=num_classes)
    return result.module, result.variables


def flax_from_torch_state_dict(state_dict: Mapping[str, Any], like: Union[nn.Module, Mapping[str, Any]]) -> dict:
    """In-memory PyTorch state dict -> Flax variables of ``like`` (a Module or its (abstract) variables).

    Pure renaming + transposes with a strict key/shape check; ``module.`` prefixes and
    num_batches_tracked are handled as in :func:`from_torch`. No architecture inference.
    """
    state_dict, _ = torch_files.clean_state_dict(state_dict)
    if isinstance(like, nn.Module):
        like = abstract_variables(like)
    return flax_from_state_dict(state_dict, like)
