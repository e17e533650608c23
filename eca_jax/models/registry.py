"""The model registry: names -> constructors and their pretrained configs, timm-style.

    @register_model(ModelCfg(torch_layout="release", eca_k=(3, 5, 5, 7)))
    def eca_resnet50(**kwargs): return ResNet(...)

``create_model(name, num_classes=1000, **kwargs)`` drops ``None`` kwargs, accepts an optional
``.tag`` suffix (``eca_resnet50.release``) and returns a flax.linen Module.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any, Callable, Optional

import flax.linen as nn

from eca_jax.constants import DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, IMAGENET_MEAN, IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class ModelCfg:
    """What a model needs besides its weights: how to feed it and where its checkpoints come from.

    torch_layout: the PyTorch key layout its parameter paths follow ("release", "torchvision", "timm").
    eca_k: the ECA kernel sizes of the released checkpoint (per stage; MobileNetV2 per block).
    input_size / crop_pct: the training resolution and the eval crop fraction that goes with it;
    test_input_size / test_crop_pct: the (larger) resolution the weights are evaluated at and its
    crop fraction (None: same as input_size / crop_pct), as timm's ``pretrained_cfg``.
    interpolation, mean, std: the eval resize and the normalization ``(x / 255 - mean) / std``.
    """
    torch_layout: str = "torchvision"
    eca_k: Optional[tuple] = None
    input_size: int = 224
    test_input_size: Optional[int] = None
    interpolation: str = DEFAULT_INTERPOLATION
    crop_pct: float = DEFAULT_CROP_PCT
    test_crop_pct: Optional[float] = None
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    num_classes: int = 1000
    weights: Optional[str] = None
    top1: Optional[float] = None
    name: str = ""


_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_CFGS: dict[str, ModelCfg] = {}


def register_model(cfg: ModelCfg) -> Callable:
    """Decorator: registers ``fn`` under its function name with ``cfg``. Duplicate names are errors."""
    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _ENTRYPOINTS:
            raise ValueError(f"model {name!r} registered twice")
        _ENTRYPOINTS[name] = fn
        _CFGS[name] = dataclasses.replace(cfg, name=name)
        return fn
    return register


def resolve_model_name(name: str) -> str:
    """The registered base name of ``name`` (drops a ``.tag``); ValueError with the closest names."""
    base = name.split(".", 1)[0]
    if base not in _ENTRYPOINTS:
        close = difflib.get_close_matches(base, list(_ENTRYPOINTS), n=5, cutoff=0.5)
        hint = f" Closest registered names: {', '.join(close)}." if close else ""
        raise ValueError(f"Unknown model {name!r}.{hint} See eca_jax.models.list_models().")
    return base


def list_models(pattern: Optional[str] = None) -> list[str]:
    """Sorted registered names, optionally filtered by an fnmatch pattern such as ``'eca*'``."""
    names = sorted(_ENTRYPOINTS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_model_cfg(name: str) -> ModelCfg:
    """The :class:`ModelCfg` of a registered model."""
    return _CFGS[resolve_model_name(name)]


def create_model(name: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """Builds a registered model; ``kwargs`` override module attributes (``None`` values are dropped).

    Raises ValueError listing the closest names for an unknown model and the valid attributes for
    an unknown keyword.
    """
    entry = _ENTRYPOINTS[resolve_model_name(name)]
    if kwargs.get("pretrained"):   # weights live above the zoo (eca_jax.pretrained)
        raise ValueError(f"eca_jax.models.create_model builds the architecture only; for published weights call "
                         f"eca_jax.create_model({name!r}, pretrained=...).")
    kwargs = {k: v for k, v in kwargs.items() if v is not None and k != "pretrained"}
    try:
        return entry(num_classes=num_classes, **kwargs)
    except TypeError as e:
        module_fields = _module_fields(entry)
        bad = [k for k in kwargs if k not in module_fields]
        if not bad:
            raise
        raise ValueError(f"create_model({name!r}): unknown argument(s) {bad}; valid: {sorted(module_fields)}") from e


def _module_fields(entry: Callable) -> set[str]:
    """Keyword arguments an entrypoint accepts: its own parameters and its module's attributes."""
    import inspect
    own = set(inspect.signature(entry).parameters) - {"kwargs"}
    module_cls = getattr(entry, "module_class", None)
    fields = {f.name for f in dataclasses.fields(module_cls)} - {"parent", "name"} if module_cls else set()
    return own | fields
