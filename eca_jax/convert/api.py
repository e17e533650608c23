"""Flax -> PyTorch: ``to_torch`` / ``to_torch_state_dict``, and the metadata of a converted directory.

    to_torch("eca_resnet50", variables, "eca_resnet50.pth")               # the release's own layout

Export renames and transposes (:mod:`eca_jax.checkpoints.torch_keys`, which also fixes the key
order by rule), with num_batches_tracked for the release and torchvision layouts (timm's
published files have none). Import is :mod:`eca_jax.checkpoints.torch_import` (re-exported by
:mod:`eca_jax.convert`).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

import flax.linen as nn
import jax
import numpy as np

from eca_jax.checkpoints import torch_files
from eca_jax.checkpoints.errors import ConversionError
from eca_jax.checkpoints.shapes import check_shapes, leaf_shapes
from eca_jax.checkpoints.signature import abstract_variables
from eca_jax.checkpoints.torch_arch import HEADS
from eca_jax.checkpoints.torch_import import Converted
from eca_jax.checkpoints.torch_keys import state_dict_from_flax
from eca_jax.checkpoints.torch_resolve import model_for, stage_k


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
    module, default_layout = model_for(arch, **model_kwargs)
    layout = layout or default_layout
    name = arch if isinstance(arch, str) else type(arch).__name__
    check_shapes(leaf_shapes(variables), leaf_shapes(abstract_variables(module)), source="The variables",
                 target=name)
    host = jax.tree.map(np.asarray, {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})})
    return state_dict_from_flax(host, num_batches_tracked=layout in ("release", "torchvision"))


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
        torch_files.write_state_dict(state_dict, dst, torch_files.format_for(dst, format))
    return state_dict


def metadata_for(converted: Converted, source_path: Optional[str] = None) -> dict:
    """Metadata of a :class:`~eca_jax.checkpoints.torch_import.Converted` for
    :func:`eca_jax.checkpoints.converted.save`."""
    arch, source = converted.arch, converted.source
    return {"arch": arch.name, "model_kwargs": arch.kwargs, "num_classes": arch.num_classes,
            "eca_k": arch.eca_k, "eca_k_per_stage": stage_k(arch.eca_k), "torch_layout": arch.layout,
            "source": source.get("source") or source_path, "source_sha256": source.get("sha256"),
            "source_arch_field": source.get("arch"), "notes": list(converted.notes)}


def _num_classes(variables: Mapping[str, Any]) -> int:
    params = variables["params"]
    for head in HEADS.values():  # the classifier's scope name per family
        if head in params:
            return int(np.shape(params[head]["kernel"])[-1])
    raise ConversionError("Cannot find the classifier (fc / classifier.1) in the variables; pass num_classes.")
