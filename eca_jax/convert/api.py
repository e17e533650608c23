"""PyTorch <-> Flax conversion: ``from_torch``, ``to_torch`` and what they are made of.

    module, variables = from_torch("eca_resnet50_k3557.pth.tar")          # arch and k from the weights
    logits = module.apply(variables, x_nhwc, train=False)
    to_torch("eca_resnet50", variables, "eca_resnet50.pth")               # the release's own layout

Import (``from_torch``): read -> clean (unwrap, ``module.``, num_batches_tracked) -> resolve the
architecture (:mod:`eca_jax.convert.arch`) -> strict key/shape check -> rename + transpose
(:mod:`eca_jax.convert.mapping`). Export (``to_torch``): the inverse, with num_batches_tracked
for the release and torchvision layouts (timm's published files have none).
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

from eca_jax.convert import arch as arch_lib
from eca_jax.convert import io
from eca_jax.convert.mapping import ConversionError, flax_from_state_dict, state_dict_from_flax


@dataclasses.dataclass
class Converted:
    """The result of :func:`convert`.

    module / variables: ready for ``module.apply(variables, x_nhwc, train=False)``;
    arch: the resolved :class:`~eca_jax.convert.arch.Architecture` (name, kwargs, k per layer);
    source: what was read (path, sha256, the wrapper's unused ``arch`` field);
    notes: what the user should know (e.g. a re-initialised head);
    state_dict: the cleaned PyTorch state dict that was read (NumPy; for --verify).
    """
    module: nn.Module
    variables: dict
    arch: arch_lib.Architecture
    source: dict
    notes: list
    state_dict: dict


def _new_head(architecture: arch_lib.Architecture, seed: int) -> dict:
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


def convert(src: io.Source, arch: Optional[str] = None, *, num_classes: Optional[int] = None,
            head_seed: int = 0) -> Converted:
    """Reads ``src`` (path or in-memory state dict) and returns a :class:`Converted`.

    See :func:`from_torch` for the arguments. ``head_seed`` seeds a re-initialised classifier.
    """
    state_dict, source = io.read_state_dict(src)
    original = state_dict
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    architecture = arch_lib.resolve(shapes, arch, num_classes)
    notes = []
    if source.get("arch") and str(source["arch"]) != architecture.name:
        notes.append(f"the file says arch={source['arch']!r}; its weights are {architecture.name} "
                     "(the arch field is ignored)")
    head = architecture.head
    keep_head = architecture.file_classes == architecture.num_classes
    allow = []
    if not keep_head:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(head + ".")}
        allow = [k for k in arch_lib.torch_shapes(architecture.abstract) if k.startswith(head + ".")]
    variables = flax_from_state_dict(state_dict, architecture.abstract, architecture.order,
                                     what=architecture.name, allow_missing=allow)
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


def to_torch_state_dict(arch: Union[str, nn.Module], variables: Mapping[str, Any], *,
                        layout: Optional[str] = None, **model_kwargs: Any) -> dict[str, np.ndarray]:
    """Flax variables of model ``arch`` -> its PyTorch state dict (NumPy, PyTorch's key order).

    ``arch``: a registered name (``model_kwargs`` such as ``k_size`` or ``num_classes`` go to
    create_model; by default num_classes is read from ``variables``) or the Module itself.
    The variables are checked against the model (paths and shapes) first.
    ``layout`` overrides the model's PyTorch layout ("release"/"torchvision" add
    num_batches_tracked, "timm" does not).
    """
    if isinstance(arch, str) and "num_classes" not in model_kwargs:
        model_kwargs["num_classes"] = _num_classes(variables)
    module, default_layout = arch_lib.model_for(arch, **model_kwargs)
    layout = layout or default_layout
    abstract, order = arch_lib.abstract_variables(module, getattr(module, "in_chans", 3))
    name = arch if isinstance(arch, str) else type(arch).__name__
    expected, found = _leaf_shapes(abstract), _leaf_shapes(variables)
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and expected[k] != found[k]]
    if missing or unexpected or wrong:
        first = (f"mis-shaped {wrong[0]}: {found[wrong[0]]} vs model {expected[wrong[0]]}" if wrong else
                 f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
        raise ConversionError(f"The variables do not fit {name}: {len(wrong)} mis-shaped, {len(missing)} missing, "
                              f"{len(unexpected)} unexpected leaves; first {first}.")
    host = jax.tree.map(np.asarray, {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})})
    return state_dict_from_flax(host, num_batches_tracked=layout in ("release", "torchvision"), module_order=order)


def to_torch(arch: Union[str, nn.Module], variables: Mapping[str, Any], dst: Union[str, os.PathLike, None] = None,
             format: Optional[str] = None, **kwargs: Any) -> dict[str, np.ndarray]:
    """Writes the PyTorch state dict of ``variables`` to ``dst`` (if given) and returns it (NumPy).

    The keys and order are the release's (eca_resnet*, eca_mobilenet_v2, se_resnet50),
    torchvision's (resnet*, mobilenet_v2) or timm's (ecaresnet*); ``load_state_dict(strict=True)``
    accepts it. ``format``: "pth" (torch.save, default) or "safetensors" (default for a
    ``.safetensors`` name). The file is written atomically. Exact: Flax -> PyTorch -> Flax gives
    bit-identical arrays. ``kwargs``: see :func:`to_torch_state_dict`.
    """
    state_dict = to_torch_state_dict(arch, variables, **kwargs)
    if dst is not None:
        io.write_state_dict(state_dict, dst, io.format_for(dst, format))
    return state_dict


def flax_from_torch_state_dict(state_dict: Mapping[str, Any], like: Union[nn.Module, Mapping[str, Any]]) -> dict:
    """In-memory PyTorch state dict -> Flax variables of ``like`` (a Module or its (abstract) variables).

    Pure renaming + transposes with a strict key/shape check; ``module.`` prefixes and
    num_batches_tracked are handled as in :func:`from_torch`. No architecture inference.
    """
    state_dict, _ = io.clean_state_dict(state_dict)
    order = None
    if isinstance(like, nn.Module):
        like, order = arch_lib.abstract_variables(like, getattr(like, "in_chans", 3))
    return flax_from_state_dict(state_dict, like, order)


def _leaf_shapes(tree: Mapping[str, Any]) -> dict[str, tuple]:
    flat = traverse_util.flatten_dict({k: tree.get(k, {}) for k in ("params", "batch_stats")})
    return {"/".join(k): tuple(np.shape(v)) for k, v in flat.items()}


def _num_classes(variables: Mapping[str, Any]) -> int:
    params = variables["params"]
    for head in arch_lib.HEADS.values():  # the classifier's scope name per family
        if head in params:
            return int(np.shape(params[head]["kernel"])[-1])
    raise ConversionError("Cannot find the classifier (fc / classifier.1) in the variables; pass num_classes.")
