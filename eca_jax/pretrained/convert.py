"""A checked PyTorch weight file -> the converted Flax checkpoint in the cache, once.

The file is read by the checkpoint layer's converter (:func:`eca_jax.checkpoints.torch_import.convert`,
architecture and k inferred from the shapes), which must find the entry's model and k list; an optional
``verify`` callable (``eca_jax.convert.verify.verify``, --verify's logits check, which needs torch and sits
above this layer, so callers pass it in) must report a relative error <= ``tolerance``. Then the
variables and their metadata are written with :func:`eca_jax.checkpoints.converted.save` (temp
directory + rename: a failed or killed conversion leaves nothing). A tqdm bar shows the steps.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from eca_jax.checkpoints import converted
from eca_jax.checkpoints.errors import ConversionError
from eca_jax.checkpoints.torch_import import convert
from eca_jax.checkpoints.torch_resolve import stage_k
from eca_jax.pretrained import cache
from eca_jax.pretrained.errors import IntegrityError, PretrainedError
from eca_jax.pretrained.manifest import Weights

Verify = Callable[..., dict]


def check_architecture(result, entry: Weights, path: str, quarantine: bool) -> None:
    """The file must hold ``entry.model`` with ``entry.eca_k`` (when the manifest has a k list)."""
    k = stage_k(result.arch.eca_k)
    problem = None
    if result.arch.name != entry.model:
        problem = f"it holds {result.arch.name} (from its shapes), not {entry.model}"
    elif entry.eca_k is not None and tuple(k) != tuple(entry.eca_k):
        problem = f"its ECA k per stage is {k}, the published {entry.name} has {list(entry.eca_k)}"
    if problem:
        where = f" Moved to {cache.quarantine(path)}." if quarantine else ""
        raise IntegrityError(f"{path} is not the {entry.name} weight file: {problem}.{where}")


def convert_to_cache(path: str, digest: str, entry: Weights, *, verify: Optional[Verify] = None,
                     tolerance: float = 1e-4, verify_size: int = 128, progress: bool = True,
                     quarantine: bool = True, dst: Optional[str] = None) -> str:
    """Converts the checked file ``path`` (SHA-256 ``digest``) of ``entry`` into ``dst`` (default: the
    cache's ``converted/<model>.<tag>``); returns that directory. ``quarantine``: move a file of the wrong
    architecture out of the cache (False for a user's own file)."""
    from tqdm.auto import tqdm  # noqa: PLC0415
    dst = dst or cache.converted_dir(entry.name)
    with tqdm(total=3 if verify else 2, desc=f"converting {entry.name}", disable=not progress, leave=False) as bar:
        try:
            result = convert(path)
        except ConversionError as e:
            if quarantine:
                e = f"{e} Moved to {cache.quarantine(path)}."
            raise IntegrityError(f"{entry.filename} for {entry.name} cannot be converted: {e}") from None
        check_architecture(result, entry, path, quarantine)
        bar.update()
        meta = {"arch": result.arch.name, "model_kwargs": result.arch.kwargs, "num_classes": result.arch.num_classes,
                "eca_k": result.arch.eca_k, "eca_k_per_stage": stage_k(result.arch.eca_k),
                "torch_layout": result.arch.layout, "source": os.path.abspath(path), "source_sha256": digest,
                "source_arch_field": result.source.get("arch"), "notes": list(result.notes),
                "pretrained": {"name": entry.name, "source": entry.source, "from": entry.where,
                               "licence": entry.licence, "top1": entry.top1, "top1_size": entry.top1_size,
                               "cfg": dict(entry.cfg)}}
        if verify is not None:
            report = verify(result.module, result.variables, result.state_dict, size=verify_size)
            if not report["rel_err"] <= tolerance:
                raise PretrainedError(f"{entry.name}: the converted logits differ from PyTorch's (relative error "
                                      f"{report['rel_err']:.3e} > {tolerance:g}); nothing was cached.")
            meta["verify"] = report
            bar.update()
        out = converted.save(dst, result.variables, meta, overwrite=True)
        bar.update()
    return out
